"""An emulator on the new (signed) upload path, next to the plugin's legacy one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kiln.emulator import Emulator, EmulatorConfig
from kiln.testing import EmulatorClient


@pytest.fixture(scope="session")
def signing_emulator() -> Iterator[EmulatorClient]:
    """A session emulator whose prepare answers select the signed upload path (sign_mode new);
    tests reset it themselves."""
    with (
        Emulator(EmulatorConfig(sign_mode="new")) as emulator,
        EmulatorClient(emulator.url) as client,
    ):
        yield client
