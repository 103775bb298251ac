"""The machine tests' fixtures: shared in-process emulators, reset for every test.

A test marked ``cloud`` runs twice: against the ideal emulator and against the cloud profile
with its timings scaled down (pending sandboxes erroring early, the proxy on its own port,
streams cut by idle and age limits, 411 for unsized uploads).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kiln.emulator import PROFILES
from kiln.testing import EmulatorClient
from support.machine import EmulatorPool


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "emulator" in metafunc.fixturenames and metafunc.definition.get_closest_marker("cloud"):
        metafunc.parametrize("emulator", PROFILES, indirect=True)


@pytest.fixture
def emulator(
    emulator_pool: EmulatorPool, request: pytest.FixtureRequest
) -> Iterator[EmulatorClient]:
    """The session's emulator for the default profile (or, for a ``cloud`` test, each profile
    in turn), reset; the test fails if a sandbox is left running."""
    with emulator_pool.running(getattr(request, "param", "ideal")) as emulator:
        yield emulator
