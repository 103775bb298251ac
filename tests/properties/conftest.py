"""Session emulators beside the plugin's ideal one, from the suite's pool: the new (signed) upload
path, and the cloud profile at test speed. Tests reset them themselves (per example)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kiln.testing import EmulatorClient
from support.machine import EmulatorPool


@pytest.fixture(scope="session")
def signing_emulator(emulator_pool: EmulatorPool) -> Iterator[EmulatorClient]:
    """The session's emulator whose prepare answers select the signed upload path."""
    with EmulatorClient(emulator_pool.url(sign_mode="new")) as client:
        yield client


@pytest.fixture(scope="session")
def cloud_emulator(emulator_pool: EmulatorPool) -> Iterator[EmulatorClient]:
    """The session's emulator under the cloud profile with kiln.testing's scaled timings."""
    with EmulatorClient(emulator_pool.url("cloud")) as client:
        yield client
