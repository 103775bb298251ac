"""A builder or a sandbox that dies of something else than the usual faults fails the build at once.

Both were gaps a hand-made mutant slipped through (issue 17): a builder killed by a signal treated
as a success, and a sandbox terminated while pending polled until the phase's deadline.
"""

from __future__ import annotations

from kiln.errors import BuildFailed, PhaseTimeout, WithDiagnostics
from kiln.testing import EmulatorClient
from support.machine import EmulatorPool, fast_spec, run_to_end, start_run
from support.polling import wait_until

SIGTERM = 15
# Far beyond the one poll a terminated sandbox needs, yet short enough that a build that keeps
# polling it (the mutant) fails this test sooner than after the declared 120 s.
WAIT_RUNNING_DEADLINE_S = 60.0
# Generous: the build reaches wait_running in well under a second on an idle machine.
REACH_WAIT_RUNNING_S = 60.0
# Long enough that the sandbox is still pending when the test terminates it, whatever the load.
PENDING_FOR_MS = 120_000


async def test_a_builder_killed_by_a_signal_fails_the_build(emulator: EmulatorClient) -> None:
    emulator.set_builder(signal=SIGTERM)
    run = await run_to_end(emulator)
    assert run.state.state == "failed"
    assert "failed with exit code -15" in str(run.driver.error)
    assert "OOM" not in str(run.driver.error)
    assert run.state.attempts["run_builder"] == 1
    assert "read_metadata" not in run.states_entered()
    error = run.driver.error
    assert isinstance(error, BuildFailed) and isinstance(error.source, WithDiagnostics)
    assert not any("memory" in line for line in error.source.advice)
    assert emulator.templates() == []


async def test_a_sandbox_terminated_while_pending_fails_the_build_at_once(
    emulator_pool: EmulatorPool,
) -> None:
    spec = fast_spec(wait_running={"deadline_s": WAIT_RUNNING_DEADLINE_S})
    with emulator_pool.running(start_delay_ms=PENDING_FOR_MS) as admin:
        run = start_run(admin, spec=spec)
        await wait_until(
            lambda: run.state.state == "wait_running" and run.state.sandbox_id is not None,
            timeout_s=REACH_WAIT_RUNNING_S,
        )
        sandbox_id = run.state.sandbox_id
        assert sandbox_id is not None
        assert [s["status"] for s in admin.sandboxes()] == ["pending"]
        admin.terminate_sandbox(sandbox_id)
        await run.finish()
    assert run.state.state == "failed"
    error = run.driver.error
    assert not isinstance(error, PhaseTimeout), error
    assert f"Sandbox {sandbox_id} terminated before reaching 'running'" in str(error)
    # A permanent failure: no second attempt, straight to cleanup.
    assert run.state.attempts["wait_running"] == 1
    assert run.states_entered()[-2:] == ["cleanup", "failed"]
