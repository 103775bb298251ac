"""Real `kiln` processes: killed with SIGKILL at every transition then resumed by another process,
killed while the builder runs, and cancelled from another process."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from kiln import resume
from kiln.durable import KILL_AFTER_TRANSITION_ENV
from kiln.machine import load_machine_spec
from kiln.store import Store
from kiln.testing import TEST_TOKEN, EmulatorClient
from support.durable import raw_store_text
from support.emulator import builder_starts
from support.paths import HELLO
from support.polling import wait_until
from support.processes import build_id_of, kiln_env, run_kiln_async, spawn_kiln

# resolve_scope -> prepare -> ... -> cleanup -> done: one transition per state on the happy path.
HAPPY_TRANSITIONS = len(load_machine_spec().states)
# Python processes on a small CI machine: a few at a time keep each one quick.
PARALLEL_PROCESSES = 3


def _build_argv(emulator: EmulatorClient, name: str) -> list[str]:
    return ["build", str(HELLO), "--api-url", emulator.url, "--name", name]


@pytest.mark.slow
async def test_a_build_killed_after_each_transition_resumes_with_one_builder(
    store_url: str, store: Store, emulator: EmulatorClient, tmp_path: Path
) -> None:
    env = kiln_env(tmp_path, store_url=store_url, token=TEST_TOKEN)
    gate = asyncio.Semaphore(PARALLEL_PROCESSES)

    async def kill_then_resume(transition: int) -> str:
        async with gate:
            killed_env = {**env, KILL_AFTER_TRANSITION_ENV: str(transition)}
            process = await spawn_kiln(_build_argv(emulator, f"hello-{transition}"), killed_env)
            build_id = await build_id_of(process)
            async with asyncio.timeout(30):
                await process.communicate()
            assert process.returncode == -signal.SIGKILL, transition
        # Resumed here through the library (`kiln resume` runs in the tests below): a second
        # process per kill point would double this test's time for no more coverage.
        build = await resume(build_id, store=store, api_key=TEST_TOKEN)
        await build.result()
        return build_id

    ids = await asyncio.gather(*(kill_then_resume(n) for n in range(1, HAPPY_TRANSITIONS + 1)))

    for transition, build_id in enumerate(ids, start=1):
        record = await store.get(build_id)
        assert record is not None and record.state == "done", transition
        assert record.sandbox_id is not None
        assert builder_starts(emulator, [record.sandbox_id]) == 1, transition
        events = await store.events(build_id)
        phases = [e.data["source"] for e in events if e.kind == "transition"]
        assert phases == list(load_machine_spec().states), "every transition is in the log once"
    assert len(emulator.sandboxes()) == HAPPY_TRANSITIONS, "one builder sandbox per build"
    assert emulator.live_sandboxes() == []
    assert TEST_TOKEN not in await raw_store_text(store_url)


@pytest.mark.slow
async def test_a_build_killed_while_its_builder_runs_is_reattached(
    store_url: str, store: Store, emulator: EmulatorClient, tmp_path: Path
) -> None:
    emulator.set_builder(log_lines=20, line_pace_ms=50)
    env = kiln_env(tmp_path, store_url=store_url, token=TEST_TOKEN)
    process = await spawn_kiln(_build_argv(emulator, "hello"), env)
    build_id = await build_id_of(process)

    async def builder_running() -> bool:
        record = await store.get(build_id)
        return record is not None and record.data.get("output_events_delivered", 0) >= 5

    await wait_until(builder_running)
    process.kill()
    await process.wait()

    code, out, err = await run_kiln_async(["resume", build_id], env)

    assert code == 0, (out, err)
    record = await store.get(build_id)
    assert record is not None and record.state == "done"
    assert builder_starts(emulator) == 1
    lines = [e.data["message"] for e in await store.events(build_id) if e.kind == "build_log"]
    assert len(lines) == len(set(lines)) and "progress 20/20" in lines
    assert emulator.live_sandboxes() == []


@pytest.mark.slow
async def test_kiln_cancel_from_another_process_stops_the_build(
    store_url: str, store: Store, emulator: EmulatorClient, tmp_path: Path
) -> None:
    emulator.set_builder(duration_ms=30_000)
    env = kiln_env(tmp_path, store_url=store_url, token=TEST_TOKEN)
    process = await spawn_kiln(_build_argv(emulator, "hello"), env)
    build_id = await build_id_of(process)

    async def builder_started() -> bool:
        record = await store.get(build_id)
        return record is not None and record.data.get("builder_pid") is not None

    await wait_until(builder_started)
    code, out, _ = await run_kiln_async(["cancel", build_id], env)
    assert code == 0 and "cancel requested" in out
    async with asyncio.timeout(10):
        assert await process.wait() == 130

    record = await store.get(build_id)
    assert record is not None and record.state == "cancelled"
    assert emulator.live_sandboxes() == []
    code, out, _ = await run_kiln_async(["cancel", build_id], env)
    assert code == 0 and "already ended: cancelled" in out, "cancel is idempotent"
