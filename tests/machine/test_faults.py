"""Injected faults at every state: a build recovers within its budget, or fails decorated."""

from __future__ import annotations

from typing import Any

import pytest

from kiln.errors import BuildFailed, PhaseTimeout, WithDiagnostics
from kiln.machine import BuildOptions
from kiln.testing import EmulatorClient
from support.machine import EmulatorPool, fast_spec, run_to_end

# (state, method, path regex, matching requests to let through first, emulator config)
FAULT_POINTS: list[tuple[str, str, str, int, dict[str, Any]]] = [
    ("prepare", "GET", r"/sandbox-templates/by-name/", 0, {}),
    ("prepare", "POST", r"/sandbox-template-builds$", 0, {}),
    ("create_sandbox", "POST", r"/sandboxes$", 0, {}),
    ("wait_running", "GET", r"/sandboxes/[^/]+$", 0, {"start_delay_ms": 60}),
    ("sign", "POST", r"/api/v1/blob/sign$", 0, {"sign_mode": "new"}),
    ("upload", "PUT", r"/api/v1/files$", 0, {}),
    ("upload", "PUT", r"/api/v1/files$", 1, {}),
    ("run_builder", "POST", r"/api/v1/processes$", 0, {}),
    ("run_builder", "GET", r"/output/follow$", 0, {}),
    ("complete", "POST", r"/complete$", 0, {}),
    ("cleanup", "DELETE", r"/sandboxes/", 0, {}),
]

FAULT_KINDS: dict[str, dict[str, Any]] = {
    "status-502": {"status": 502, "body": "PROXY_ERROR: Failed to proxy request"},
    "reset": {"reset": True},
    "delay": {"delay_ms": 50},
    "cut-stream": {"cut_stream_after": 0},
}
# These make the request fail outright, so the state must have taken its retry edge.
FAILING_KINDS = {"status-502", "reset"}


def _point_id(point: tuple[str, str, str, int, dict[str, Any]]) -> str:
    state, method, path, after, _ = point
    return f"{state}-{method}-{path.strip('$/').replace('/', '_')}-after{after}"


@pytest.mark.parametrize("kind", sorted(FAULT_KINDS))
@pytest.mark.parametrize("point", FAULT_POINTS, ids=_point_id)
async def test_a_single_fault_is_survived(
    emulator_pool: EmulatorPool, point: tuple[str, str, str, int, dict[str, Any]], kind: str
) -> None:
    state_name, method, path, after, config = point
    with emulator_pool.running(**config) as admin:
        admin.add_fault(FAULT_KINDS[kind], method=method, path=path, times=1, after=after)
        run = await run_to_end(admin)
        assert run.state.state == "done", run.state.error
        if kind in FAILING_KINDS:
            assert ("retry", state_name) in [(t, d) for _, t, d in run.transitions()]


async def test_a_persistent_fault_before_the_sandbox_fails_plainly(
    emulator: EmulatorClient,
) -> None:
    emulator.add_fault({"status": 503}, method="POST", path=r"/sandbox-template-builds$", times=100)
    run = await run_to_end(emulator)
    assert run.state.state == "failed"
    assert run.state.attempts["prepare"] == fast_spec().states["prepare"].attempts
    assert not isinstance(run.driver.error, BuildFailed)
    assert emulator.sandboxes() == []


async def test_a_persistent_fault_after_the_proxy_is_ready_is_decorated(
    emulator: EmulatorClient,
) -> None:
    emulator.add_fault({"status": 502}, method="GET", path=r"/output/follow$", times=100)
    run = await run_to_end(emulator)
    assert run.state.state == "failed"
    error = run.driver.error
    assert isinstance(error, BuildFailed)
    assert error.sandbox_id == run.state.sandbox_id
    assert error.build_id == run.state.build_id
    assert f"builder sandbox: {run.state.sandbox_id}" in str(error)
    assert f"build: {run.state.build_id}" in str(error)
    assert isinstance(error.source, WithDiagnostics)
    assert run.state.error is not None and run.state.error.kind == "BuildFailed"


async def test_a_permanent_error_is_not_retried(emulator: EmulatorClient) -> None:
    emulator.add_fault(
        {"status": 409, "body": "conflict"}, method="POST", path=r"/complete$", times=100
    )
    run = await run_to_end(emulator)
    assert run.state.state == "failed"
    assert run.state.attempts["complete"] == 1
    assert "conflict" in str(run.driver.error)


@pytest.mark.parametrize(
    ("behaviour", "advice"),
    [
        ({"oom_kill": True}, "ran out of memory"),
        ({"enospc": True}, "ran out of disk space"),
    ],
)
async def test_builder_resource_failures_carry_advice(
    emulator: EmulatorClient, behaviour: dict[str, Any], advice: str
) -> None:
    emulator.set_builder(**behaviour)
    run = await run_to_end(emulator)
    assert run.state.state == "failed"
    error = run.driver.error
    assert isinstance(error, BuildFailed)
    assert isinstance(error.source, WithDiagnostics)
    assert any(advice in line for line in error.source.advice)
    assert run.state.error is not None
    assert any(advice in line for line in run.state.error.advice)


async def test_a_builder_exit_code_fails_the_build_naming_the_command(
    emulator: EmulatorClient,
) -> None:
    emulator.set_builder(exit_code=3)
    run = await run_to_end(emulator)
    assert run.state.state == "failed"
    assert "failed with exit code 3" in str(run.driver.error)
    assert run.state.attempts["run_builder"] == 1


async def test_a_phase_past_its_deadline_fails_with_phase_timeout(emulator: EmulatorClient) -> None:
    emulator.set_builder(duration_ms=5000)
    spec = fast_spec(run_builder={"deadline_s": 0.3})
    run = await run_to_end(emulator, spec=spec)
    assert run.state.state == "failed"
    error = run.driver.error
    assert isinstance(error, PhaseTimeout)
    assert (error.phase, error.limit_s) == ("run_builder", 0.3)
    assert run.state.sandbox_deleted


async def test_the_overall_deadline_fails_with_phase_timeout(emulator: EmulatorClient) -> None:
    emulator.set_builder(duration_ms=5000)
    options = BuildOptions(api_url=emulator.url, deadline_s=0.5)
    run = await run_to_end(emulator, options=options)
    assert run.state.state == "failed"
    error = run.driver.error
    assert isinstance(error, PhaseTimeout)
    assert error.phase == "build"
    assert "0.5s" in str(error)
    assert run.state.sandbox_deleted


async def test_a_failed_delete_is_a_warning_and_retried(emulator: EmulatorClient) -> None:
    emulator.add_fault({"status": 500}, method="DELETE", path=r"/sandboxes/", times=2)
    run = await run_to_end(emulator)
    assert run.state.state == "done"
    assert run.state.attempts["cleanup"] == 3
    warnings = run.messages("warning")
    assert any("Failed to terminate rootfs builder sandbox" in w for w in warnings)


async def test_cleanup_past_its_deadline_gives_up_and_keeps_the_outcome(
    emulator: EmulatorClient,
) -> None:
    # Every delete hangs past cleanup's deadline: cleanup gives up as when its attempts run out,
    # with a warning, and the registered build still ends done (not failed by a timeout).
    emulator.add_fault({"delay_ms": 2000}, method="DELETE", path=r"/sandboxes/", times=10)
    run = await run_to_end(emulator, spec=fast_spec(cleanup={"deadline_s": 0.3}))
    assert run.state.state == "done"
    assert run.state.result is not None
    assert run.state.error is None
    assert any("Gave up deleting rootfs builder sandbox" in w for w in run.messages("warning"))
    # The hung deletes never reached the platform: the sandbox is left, as the warning says.
    assert [s["sandbox_id"] for s in emulator.live_sandboxes()] == [run.state.sandbox_id]
    emulator.reset()
