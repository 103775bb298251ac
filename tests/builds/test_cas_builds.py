"""The CAS path from the library and the CLI: ``cas=True`` / ``--cas`` build on the Image Service
(states/cas.toml), build args are sent natively, and without ``cas`` they are refused as the
official client refuses them (docs/image-service.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import kiln
from kiln.errors import UsageError
from kiln.testing import TEST_TOKEN, EmulatorClient
from support.events import check_event
from support.machine import EmulatorPool
from support.paths import HELLO

REPO = Path(__file__).resolve().parents[2]
PROCESS_TIMEOUT_S = 120


@pytest.fixture
def emulator(emulator_pool: EmulatorPool) -> Iterator[EmulatorClient]:
    """The session's shared emulator, reset; the test fails if a sandbox is left running."""
    with emulator_pool.running() as emulator:
        yield emulator


async def test_cas_true_builds_on_the_image_service_with_native_build_args(
    emulator: EmulatorClient,
) -> None:
    events: list[kiln.Event] = []
    template = await kiln.build_image(
        HELLO,
        cas=True,
        build_args={"GREETING": "hi"},
        api_url=emulator.url,
        api_key=TEST_TOKEN,
        on_event=events.append,
    )
    assert template.id.startswith("image_")
    assert template.name == "hello"
    [build] = emulator.image_builds()
    assert build["build_args"] == {"GREETING": "hi"}
    assert build["status"] == "succeeded"
    assert emulator.sandboxes() != []  # the service's builder sandbox, ended
    assert emulator.live_sandboxes() == []
    assert kiln.StatusEvent("Loading Dockerfile...") == events[0]


async def test_cas_true_imports(emulator: EmulatorClient) -> None:
    template = await kiln.import_image(
        "python:3.12-slim", cas=True, api_url=emulator.url, api_key=TEST_TOKEN
    )
    assert template.id.startswith("image_")
    [build] = emulator.image_builds()
    assert (build["kind"], build["image_ref"]) == ("import", "python:3.12-slim")


async def test_build_args_without_cas_are_refused_before_anything_is_sent(
    emulator: EmulatorClient,
) -> None:
    with pytest.raises(UsageError) as refused:
        await kiln.build_image(
            HELLO, build_args={"A": "1"}, api_url=emulator.url, api_key=TEST_TOKEN
        )
    assert "cas=True" in (refused.value.hint or "")
    assert emulator.requests() == []


def test_kiln_build_cas_sends_build_args_natively(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KILN_", "TENSORLAKE_"))}
    env.update(XDG_STATE_HOME=str(tmp_path / "state"), GREETING="from-env")
    args = ["build", "--cas", "--build-arg", "A=1", "--build-arg", "GREETING", "--json"]
    run = subprocess.run(
        [sys.executable, "-m", "kiln", *args, str(HELLO.parent)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_S,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    lines = [check_event(json.loads(line)) for line in run.stdout.splitlines()]
    [result] = [line for line in lines if line["type"] == "result"]
    assert result["state"] == "done"
    assert result["template"]["id"].startswith("image_")
    transitions = [line["dest"] for line in lines if line["type"] == "transition"]
    assert "create_build" in transitions and "prepare" not in transitions
