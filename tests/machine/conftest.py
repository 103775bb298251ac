"""The machine tests' fixtures: shared in-process emulators, reset for every test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from machine_support import Admin, EmulatorPool


@pytest.fixture(scope="session")
def emulator_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorPool]:
    pool = EmulatorPool(Path(tmp_path_factory.mktemp("machine-emulators")))
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
async def emulator(emulator_pool: EmulatorPool) -> AsyncIterator[Admin]:
    """The default emulator, reset; the test fails if a sandbox is left running."""
    async with emulator_pool.running() as admin:
        yield admin
