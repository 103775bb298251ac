"""Fixtures for the emulator's own tests: a server shared by a module and reset for every test,
its admin API, a raw HTTP client and a sandbox to drive (the helpers are in support.wire)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from kiln.emulator import Emulator, EmulatorConfig
from kiln.testing import EmulatorClient
from support.wire import AUTH, CREATE_BODY, SANDBOXES, SandboxDriver


@pytest.fixture(scope="module")
def shared_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    # One server per module keeps the suite fast (stopping uvicorn costs a few hundred ms);
    # `emulator` resets it before every test, so tests still start from nothing.
    with Emulator(EmulatorConfig(data_dir=tmp_path_factory.mktemp("data"))) as emu:
        yield emu


@pytest.fixture
def admin(shared_emulator: Emulator) -> Iterator[EmulatorClient]:
    """The shared emulator's admin API, reset: no sandboxes, templates, faults or requests."""
    with EmulatorClient(shared_emulator.url) as client:
        client.reset()
        yield client


@pytest.fixture
def emulator(shared_emulator: Emulator, admin: EmulatorClient) -> Emulator:
    """The shared emulator, reset."""
    return shared_emulator


@pytest.fixture
def http(emulator: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.url, headers=AUTH, timeout=30) as client:
        yield client


@pytest.fixture
def sandbox(http: httpx.Client) -> SandboxDriver:
    response = http.post(SANDBOXES, json=CREATE_BODY)
    assert response.status_code == 200, response.text
    return SandboxDriver(http, response.json()["sandbox_id"])
