"""Fixtures shared by the whole suite (loaded by ``tests/conftest.py``).

One PostgreSQL cluster per session (``postgres_cluster``; each test takes a fresh database of
its own); the emulators shared by a session (``emulator_pool``; ``pooled_emulator``, its ideal
one reset for a test); and the defaults for builds
run against an emulator and a store: ``emulator``, an emulator of the test's own, and
``store``, an empty store on SQLite and then on PostgreSQL. A directory whose tests need
another flavour (tests/machine: a shared emulator reset per test; tests/store: every backend
on a fake clock; tests/emulator: the server object itself) overrides the name in its conftest.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog

from kiln.emulator import Emulator, EmulatorConfig
from kiln.store import Store, open_store
from kiln.testing import TEST_TOKEN, EmulatorClient
from kiln.testing.postgres import PostgresCluster
from support.machine import EmulatorPool

# The loggers `kiln` configures for a terminal, whose levels a test that runs main() restores.
KILN_LOGGERS = ("kiln", "kiln.build", "kiln.durable", "kiln.worker", "kiln.emulator")


def fresh_database(cluster: PostgresCluster, prefix: str = "test") -> str:
    """A new, empty database on ``cluster``; its URL."""
    return cluster.create_database(f"{prefix}_{uuid.uuid4().hex[:16]}")


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """The session's private PostgreSQL cluster, started by the first test that needs it."""
    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture
def postgres_store_url(postgres_cluster: PostgresCluster) -> str:
    """A fresh, empty database for one test."""
    return fresh_database(postgres_cluster)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL for an empty store: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'builds.db'}"
    url: str = request.getfixturevalue("postgres_store_url")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = open_store(store_url)
    yield opened
    await opened.close()


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[EmulatorClient]:
    """An emulator of this test's own, in this process, on a loopback port a `kiln` subprocess
    reaches too."""
    with (
        Emulator(EmulatorConfig(data_dir=tmp_path / "emulator")) as server,
        EmulatorClient(server.url) as client,
    ):
        yield client


@pytest.fixture(scope="session")
def emulator_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorPool]:
    """In-process emulators shared by the session, one per configuration (reset per test)."""
    pool = EmulatorPool(Path(tmp_path_factory.mktemp("emulators")))
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def pooled_emulator(emulator_pool: EmulatorPool) -> Iterator[EmulatorClient]:
    """The session's ideal emulator, reset; the test fails if it leaves a sandbox running. For
    in-process builds (a `kiln` subprocess killed mid-build wants an ``emulator`` of its own)."""
    with emulator_pool.running() as emulator:
        yield emulator


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """For tests that run ``kiln.cli.main()`` in this process: it configures structlog and stdlib
    logging for a terminal, and later tests must find them as they were."""
    configured = structlog.is_configured()
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in KILN_LOGGERS}
    yield
    structlog.reset_defaults()
    if configured:
        structlog.configure(**config)
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)


@pytest.fixture
def store_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """For ``kiln.cli.main()`` in this process: ``$KILN_STORE`` names a fresh SQLite store
    (``tmp_path / "builds.db"``), the state directory is under ``tmp_path``, and the Tensorlake
    credentials are ``TEST_TOKEN``. Returns the store's URL."""
    url = f"sqlite:///{tmp_path / 'builds.db'}"
    monkeypatch.setenv("KILN_STORE", url)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("TENSORLAKE_API_KEY", TEST_TOKEN)
    return url
