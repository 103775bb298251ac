"""Crash level with real processes: generated SIGKILL points, in `kiln build` and then in
`kiln resume` (killed again), then a last `kiln resume`; whatever the kill points, the build ends
done with one builder process, one served complete, no live sandbox and no token in the store."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kiln.durable import KILL_AFTER_TRANSITION_ENV
from kiln.emulator import Emulator
from kiln.machine import load_machine_spec
from kiln.store import open_store
from kiln.testing import TEST_TOKEN, EmulatorClient, emulator_config
from support.durable import raw_store_text
from support.emulator import builder_starts
from support.paths import HELLO
from support.processes import build_id_of, kiln_env, run_kiln_async, spawn_kiln

# One transition per state on the happy path; a kill point past what is left simply never fires.
HAPPY_TRANSITIONS = len(load_machine_spec().states)
# A first kill in `kiln build`, then up to two more in the `kiln resume` processes after it.
KILL_POINTS = st.lists(st.integers(1, HAPPY_TRANSITIONS), min_size=1, max_size=3)
# Each example runs two to four Python processes: a handful keeps CI quick; --hypothesis-profile
# deep is for long local runs.
EXAMPLES = 4
# Under the cloud profile every process also waits out a pending sandbox (a second of backoff
# after its early 502s): one example per store.
CLOUD_EXAMPLES = 1
KILLED = -signal.SIGKILL


@pytest.mark.slow
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(kills=KILL_POINTS)
@example(kills=[HAPPY_TRANSITIONS - 1, 1])  # killed in cleanup, then at once on resume
def test_generated_kills_then_resumes_keep_the_invariants(
    store_url: str, emulator: EmulatorClient, tmp_path: Path, kills: list[int]
) -> None:
    asyncio.run(_kill_resume_check(store_url, emulator, tmp_path, kills))


async def _kill_resume_check(
    store_url: str, emulator: EmulatorClient, tmp_path: Path, kills: list[int]
) -> None:
    env = kiln_env(tmp_path, store_url=store_url, token=TEST_TOKEN)
    name = f"crash-{uuid.uuid4().hex[:8]}"
    argv = ["build", str(HELLO), "--api-url", emulator.url, "--name", name]
    first = await spawn_kiln(argv, {**env, KILL_AFTER_TRANSITION_ENV: str(kills[0])})
    build_id = await build_id_of(first)
    async with asyncio.timeout(60):
        await first.communicate()
    assert first.returncode == KILLED, kills
    for kill in kills[1:]:
        code, _, err = await run_kiln_async(
            ["resume", build_id], {**env, KILL_AFTER_TRANSITION_ENV: str(kill)}
        )
        assert code in (KILLED, 0), err  # killed at its point, or done before reaching it
    code, _, err = await run_kiln_async(["resume", build_id], env)
    assert code == 0, err

    store = open_store(store_url)
    try:
        record = await store.get(build_id)
    finally:
        await store.close()
    assert record is not None and record.state == "done", record
    assert record.sandbox_id is not None
    assert builder_starts(emulator, [record.sandbox_id]) == 1, kills
    assert record.sandbox_id not in {s["sandbox_id"] for s in emulator.live_sandboxes()}
    platform_build = record.data["build_id"]
    completes = [
        r for r in emulator.requests() if r["path"].endswith(f"/{platform_build}/complete")
    ]
    assert len([r for r in completes if r["status"] == 200]) == 1, completes
    assert TEST_TOKEN not in await raw_store_text(store_url)


@pytest.fixture
def cloud_emulator(tmp_path: Path) -> Iterator[EmulatorClient]:
    """A fresh emulator under the cloud profile, timings scaled down (kiln.testing's)."""
    with (
        Emulator(emulator_config("cloud", data_dir=tmp_path / "emulator")) as server,
        EmulatorClient(server.url) as client,
    ):
        yield client


@pytest.mark.slow
@settings(
    max_examples=CLOUD_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(kills=KILL_POINTS)
def test_generated_kills_then_resumes_keep_the_invariants_in_the_cloud(
    store_url: str, cloud_emulator: EmulatorClient, tmp_path: Path, kills: list[int]
) -> None:
    asyncio.run(_kill_resume_check(store_url, cloud_emulator, tmp_path, kills))
