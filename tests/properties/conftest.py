"""Session emulators next to the plugin's legacy one: the new (signed) upload path, and the
cloud profile at test speed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kiln.emulator import Emulator, EmulatorConfig
from kiln.testing import EmulatorClient, emulator_config


@pytest.fixture(scope="session")
def signing_emulator() -> Iterator[EmulatorClient]:
    """A session emulator whose prepare answers select the signed upload path (sign_mode new);
    tests reset it themselves."""
    with (
        Emulator(EmulatorConfig(sign_mode="new")) as emulator,
        EmulatorClient(emulator.url) as client,
    ):
        yield client


@pytest.fixture(scope="session")
def cloud_emulator() -> Iterator[EmulatorClient]:
    """A session emulator under the cloud profile with kiln.testing's scaled timings; tests
    reset it themselves."""
    with (
        Emulator(emulator_config("cloud")) as emulator,
        EmulatorClient(emulator.url) as client,
    ):
        yield client
