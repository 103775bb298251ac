"""The machine tests' fixture: an in-process emulator that must end with no live sandbox."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from machine_support import Admin, running_emulator


@pytest.fixture
async def emulator(tmp_path: Path) -> AsyncIterator[Admin]:
    async with running_emulator(tmp_path / "emulator") as admin:
        yield admin
