"""A `kiln build --cas` killed with SIGKILL as it enters each state of states/cas.toml, then
`kiln resume ID`: the build ends done, and the Image Service holds exactly one build of it (the
admission's Idempotency-Key was persisted before it was first sent)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.emulator import Emulator, EmulatorConfig
from kiln.machine import CAS_MACHINE, load_machine_spec
from kiln.testing import TEST_TOKEN, EmulatorClient
from support.events import check_event
from support.paths import HELLO, REPO
from support.processes import PROCESS_TIMEOUT_S, kiln_argv, kiln_env, run_kiln

SPEC = load_machine_spec(name=CAS_MACHINE)
# Every state a build passes on its way to done (release is a way out, not on it).
ON_THE_WAY = [s for s in SPEC.states if s != SPEC.initial and s != SPEC.cleanup]
# Long enough that the build is still on the service when kiln dies in wait_build.
BUILDER_MS = 2000


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[EmulatorClient]:
    with (
        Emulator(EmulatorConfig(data_dir=tmp_path / "emulator")) as server,
        EmulatorClient(server.url) as client,
    ):
        yield client


def killed_on_entering(state: str, emulator: EmulatorClient, env: dict[str, str]) -> str:
    """Start `kiln build --cas --json`, SIGKILL it when it reports entering ``state``; its id."""
    argv = kiln_argv("build", "--cas", "--json", "--api-url", emulator.url, str(HELLO.parent))
    with subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, text=True) as build:
        assert build.stdout is not None
        for line in build.stdout:
            event = check_event(json.loads(line))
            if event["type"] == "transition" and event["dest"] == state:
                os.kill(build.pid, signal.SIGKILL)
                break
        build.wait(timeout=PROCESS_TIMEOUT_S)
    assert build.returncode == -signal.SIGKILL, f"the build ended before entering {state}"
    listing = run_kiln(["ls", "--json"], env)
    assert listing.returncode == 0, listing.stderr
    listed = json.loads(listing.stdout)
    [record] = listed
    assert record["state"] not in SPEC.finals, record
    build_id: str = record["id"]
    return build_id


@pytest.mark.slow
@pytest.mark.parametrize("state", ON_THE_WAY)
def test_killed_entering_each_state_resumes_onto_one_remote_build(
    state: str, emulator: EmulatorClient, tmp_path: Path
) -> None:
    emulator.set_builder(duration_ms=BUILDER_MS)
    env = kiln_env(tmp_path, token=TEST_TOKEN)
    build_id = killed_on_entering(state, emulator, env)
    resumed = run_kiln(["resume", build_id, "--json"], env)
    assert resumed.returncode == 0, resumed.stderr
    result = check_event(json.loads(resumed.stdout.splitlines()[-1]))
    assert (result["type"], result["state"]) == ("result", "done")
    assert result["template"]["id"].startswith("image_")
    [remote] = emulator.image_builds()
    assert remote["status"] == "succeeded"
    assert remote["result"]["id"] == result["template"]["id"]
    assert emulator.live_sandboxes() == []
