"""kiln's pytest plugin: fixtures for projects that embed kiln.

pytest loads it by itself when kiln is installed (entry point ``kiln``); ``pytest -p kiln.testing``
loads it explicitly, e.g. under ``PYTEST_DISABLE_PLUGIN_AUTOLOAD``.

``kiln_emulator``
    An :class:`~kiln.testing.EmulatorClient` for an in-process emulator started once per session
    and reset before every test: ``.url`` to build against, plus faults and introspection.
    Inside a hypothesis ``@given`` test, call ``kiln_emulator.reset()`` at the start of each
    example (and suppress ``HealthCheck.function_scoped_fixture``).
    Its profile is ``ideal`` unless ``--kiln-emulator-profile cloud`` (or the environment
    variable ``KILN_EMULATOR_PROFILE=cloud``) asks for the cloud profile at test speed; a project
    can also override the session fixture ``kiln_emulator_config`` with any configuration.
``kiln_store``
    A fresh, empty build store; the test runs once with the in-memory store and once with SQLite.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# The profiles' names only (the emulator's configuration module): pytest loads this plugin in
# every run where kiln is installed, so the emulator's server and the stores load in the
# fixtures that use them, not here.
from kiln.emulator import PROFILES

if TYPE_CHECKING:
    from kiln.emulator import Emulator, EmulatorConfig
    from kiln.store import Store
    from kiln.testing._client import EmulatorClient

STORE_KINDS = ("memory", "sqlite")
SQLITE_FILE = "builds.db"
PROFILE_OPTION = "--kiln-emulator-profile"
PROFILE_ENV = "KILN_EMULATOR_PROFILE"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("kiln").addoption(
        PROFILE_OPTION,
        choices=PROFILES,
        default=None,
        help=f"the kiln_emulator fixture's profile (default: ${PROFILE_ENV}, else ideal)",
    )


def chosen_profile(config: pytest.Config) -> str:
    """The option if given, else the environment, else ``ideal``."""
    chosen = config.getoption(PROFILE_OPTION.lstrip("-").replace("-", "_"), default=None)
    profile = chosen or os.environ.get(PROFILE_ENV) or "ideal"
    if profile not in PROFILES:
        raise pytest.UsageError(f"{PROFILE_ENV}={profile!r}: expected one of {PROFILES}")
    return str(profile)


@pytest.fixture(scope="session")
def kiln_emulator_config(request: pytest.FixtureRequest) -> EmulatorConfig:
    """The configuration of the session's emulator; override it in a conftest to choose."""
    from kiln.testing._profiles import emulator_config

    return emulator_config(chosen_profile(request.config))


@pytest.fixture(scope="session")
def kiln_emulator_server(kiln_emulator_config: EmulatorConfig) -> Iterator[Emulator]:
    """The session's emulator (loopback ports, a temporary data directory)."""
    from kiln.emulator import Emulator

    with Emulator(kiln_emulator_config) as emulator:
        yield emulator


@pytest.fixture
def kiln_emulator(kiln_emulator_server: Emulator) -> Iterator[EmulatorClient]:
    """The session's emulator, reset: no sandboxes, templates, faults or logged requests."""
    from kiln.testing._client import EmulatorClient

    token = kiln_emulator_server.config.api_key
    with EmulatorClient(kiln_emulator_server.url, token=token) as client:
        client.reset()
        yield client


@pytest.fixture(params=STORE_KINDS)
def kiln_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """An empty store of each kind in turn."""
    from kiln.store import MemoryStore, SQLiteStore

    store: Store = (
        MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / SQLITE_FILE)
    )
    yield store
    # A private loop: the test's own loop (pytest-asyncio's, anyio's) may be gone or still
    # installed, and asyncio.run would replace whichever is current.
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(store.close())
    finally:
        loop.close()
