"""The machine tests' fixtures: shared in-process emulators, reset for every test.

A test marked ``cloud`` runs twice: against the ideal emulator and against the cloud profile
with its timings scaled down (pending sandboxes erroring early, the proxy on its own port,
streams cut by idle and age limits, 411 for unsized uploads).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from support.machine import PROFILES, Admin, EmulatorPool, profile_config


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "emulator" in metafunc.fixturenames and metafunc.definition.get_closest_marker("cloud"):
        metafunc.parametrize("emulator", PROFILES, indirect=True)


@pytest.fixture
async def emulator(
    emulator_pool: EmulatorPool, request: pytest.FixtureRequest
) -> AsyncIterator[Admin]:
    """The default emulator (or, for a ``cloud`` test, each profile in turn), reset; the test
    fails if a sandbox is left running."""
    profile = getattr(request, "param", "ideal")
    async with emulator_pool.running(**profile_config(profile)) as admin:
        yield admin
