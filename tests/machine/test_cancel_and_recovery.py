"""Cancellation from every state, and the builder's start recovery and reattach."""

from __future__ import annotations

import asyncio
from typing import Any

import attrs
import pytest

from kiln.machine import Backoff, BuildState, load_machine_spec
from kiln.testing import EmulatorClient
from support.emulator import builder_processes, builder_starts
from support.machine import EmulatorPool, LoseFirstAnswer, fast_spec, run_to_end, start_run
from support.polling import wait_until

SPEC = load_machine_spec()


@pytest.mark.parametrize("at", [s for s in SPEC.states if s != SPEC.cleanup])
async def test_cancel_on_entering_any_state_ends_cancelled(
    emulator: EmulatorClient, at: str
) -> None:
    holder: dict[str, Any] = {}

    async def persist(state: BuildState) -> None:
        if state.state == at:
            holder["run"].driver.cancel()

    run = start_run(emulator, persist=persist)
    holder["run"] = run
    await run.finish()
    assert run.state.state == "cancelled"
    assert run.state.cancel_requested
    entered = run.states_entered()
    if SPEC.states[at].holds_sandbox:
        assert entered[-2:] == ["cleanup", "cancelled"]
    else:
        assert "cleanup" not in entered
    assert at not in run.state.attempts, "the cancelled state's handler never ran"


async def test_cancel_during_cleanup_still_deletes_and_keeps_the_outcome(
    emulator: EmulatorClient,
) -> None:
    holder: dict[str, Any] = {}

    async def persist(state: BuildState) -> None:
        if state.state == "cleanup":
            holder["run"].driver.cancel()

    run = start_run(emulator, persist=persist)
    holder["run"] = run
    await run.finish()
    # The image was registered before the cancel: cleanup deletes the sandbox and the build
    # ends as what it was heading for.
    assert run.state.state == "done"
    assert run.state.sandbox_deleted


async def test_cancel_while_the_builder_runs(emulator: EmulatorClient) -> None:
    emulator.set_builder(duration_ms=10_000, log_lines=1)
    run = start_run(emulator)
    await wait_until(lambda: bool(run.messages("build_log")))
    run.driver.cancel()
    await run.finish()
    assert run.state.state == "cancelled"
    assert run.states_entered()[-3:] == ["run_builder", "cleanup", "cancelled"]
    assert run.state.sandbox_deleted


async def test_cancel_while_waiting_for_the_sandbox(emulator_pool: EmulatorPool) -> None:
    with emulator_pool.running(start_delay_ms=10_000) as admin:
        run = start_run(admin)
        await wait_until(
            lambda: run.state.state == "wait_running" and run.state.sandbox_id is not None
        )
        run.driver.cancel()
        await run.finish()
        assert run.state.state == "cancelled"


async def test_cancel_during_a_retry_backoff(emulator: EmulatorClient) -> None:
    emulator.add_fault({"status": 503}, method="POST", path=r"/sandbox-template-builds$", times=100)
    # A backoff far longer than the test may take: only cancel() can end it in time.
    slow = attrs.evolve(fast_spec(), backoff=Backoff(initial_s=60, factor=1, max_s=60))
    run = start_run(emulator, spec=slow)
    while not any(r["status"] == 503 for r in emulator.requests()):
        await asyncio.sleep(0.01)
    await wait_until(lambda: run.driver._task is not None)
    run.driver.cancel()
    async with asyncio.timeout(5):
        await run.finish()
    assert run.state.state == "cancelled"
    assert run.state.attempts["prepare"] == 1


async def test_cancelling_the_caller_task_still_deletes_the_sandbox(
    emulator: EmulatorClient,
) -> None:
    emulator.set_builder(duration_ms=10_000, log_lines=1)
    run = start_run(emulator)
    await wait_until(lambda: bool(run.messages("build_log")))
    assert run.task is not None
    run.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run.finish()
    assert run.state.state == "cancelled"
    assert run.state.sandbox_deleted


async def test_a_started_builder_whose_answer_was_lost_is_adopted(emulator: EmulatorClient) -> None:
    transport = LoseFirstAnswer(lambda r: r.method == "POST" and r.url.path == "/api/v1/processes")
    run = await run_to_end(emulator, transport=transport)
    assert transport.lost == 1
    assert run.state.state == "done"
    builders = builder_processes(emulator)
    assert len(builders) == 1, "adopted the started builder instead of starting a second"
    assert run.state.builder_pid == builders[0]["pid"]
    assert any("already-started process" in w for w in run.messages("warning"))


async def test_a_cut_stream_is_reattached_without_duplicate_lines(emulator: EmulatorClient) -> None:
    lines = 8
    emulator.set_builder(log_lines=lines, line_pace_ms=30)
    emulator.add_fault({"cut_stream_after": 3}, method="GET", path=r"/output/follow$", times=2)
    run = await run_to_end(emulator)
    assert run.state.state == "done"
    logs = run.messages("build_log")
    progress = [line for line in logs if line.startswith("progress ")]
    assert progress == [f"progress {n}/{lines}" for n in range(1, lines + 1)]
    assert len(logs) == len(set(logs))
    follows = [r for r in emulator.requests() if r["path"].endswith("/output/follow")]
    assert len(follows) == 3
    assert builder_starts(emulator) == 1


async def test_a_follow_that_keeps_failing_spends_the_budget(emulator: EmulatorClient) -> None:
    # A stream that ends cleanly while the builder lives is followed again without limit (the
    # reference does so); one that fails without bringing output counts against the budget.
    emulator.set_builder(duration_ms=10_000, log_lines=1)
    emulator.add_fault({"reset": True}, method="GET", path=r"/output/follow$", times=1000)
    run = await run_to_end(emulator, spec=fast_spec(run_builder={"attempts": 3}))
    assert run.state.state == "failed"
    assert run.state.attempts["run_builder"] == 3
    assert builder_starts(emulator) == 1


async def test_cancelling_the_caller_during_a_backoff_still_deletes_the_sandbox(
    emulator: EmulatorClient,
) -> None:
    emulator.add_fault({"status": 502}, method="GET", path=r"/output/follow$", times=100)
    slow = attrs.evolve(fast_spec(), backoff=Backoff(initial_s=60, factor=1, max_s=60))
    run = start_run(emulator, spec=slow)
    while not any(r["status"] == 502 for r in emulator.requests()):
        await asyncio.sleep(0.01)
    await wait_until(lambda: run.driver._task is not None)
    assert run.task is not None
    run.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5):
            await run.finish()
    assert run.state.state == "cancelled"
    assert run.state.sandbox_deleted
