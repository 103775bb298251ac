"""Checks shared by the emulator and crash levels: what must hold after any build."""

from __future__ import annotations

import json

from kiln.machine import MachineSpec
from kiln.store import Store
from kiln.testing import TEST_TOKEN, BuildRun, EmulatorClient, FaultSchedule
from support.emulator import builder_starts, completes_served


def check_error_names_where(run: BuildRun) -> None:
    """A failed build's error names its phase, and its builder sandbox and build once they exist."""
    error = run.state.error
    assert error is not None, "a failed build without an error"
    assert error.phase is not None, error
    if run.state.sandbox_id is not None:
        assert error.phase in error.message, error.message
        assert run.state.sandbox_id in error.message, error.message
        if run.state.build_id is not None:
            assert run.state.build_id in error.message, error.message


def failed_in(spec: MachineSpec, run: BuildRun) -> str | None:
    """The state whose handler failed the build: the source of its last fail edge before cleanup."""
    fails = [s for s, t, _ in run.transitions() if t == "fail" and s != spec.cleanup]
    return fails[-1] if fails else None


def check_outcome(spec: MachineSpec, schedule: FaultSchedule, run: BuildRun) -> None:
    expected_phase = schedule.failing_phase(spec)
    assert run.outcome == schedule.expected_outcome(spec), (run.outcome, run.state.error)
    if expected_phase is not None:
        assert failed_in(spec, run) == expected_phase, run.transitions()
        check_error_names_where(run)
        assert run.state.error is not None and run.state.error.phase == expected_phase


def check_no_leftovers(
    spec: MachineSpec, schedule: FaultSchedule, emulator: EmulatorClient
) -> None:
    if not schedule.leaks_sandbox(spec):
        assert emulator.live_sandboxes() == []
    assert builder_starts(emulator) <= 1
    assert completes_served(emulator.requests()) <= 1


async def check_no_secret(run: BuildRun, store: Store) -> None:
    """The token appears in no event, log line, error, request log entry or persisted record."""
    record = await store.get(run.state.id)
    assert record is not None
    events = await store.events(run.state.id)
    texts = [
        json.dumps([event.to_dict() for event in run.events]),
        json.dumps(run.logs),
        json.dumps(run.requests),
        json.dumps(run.state.to_dict()),
        json.dumps(record.data),
        json.dumps([event.data for event in events]),
        repr(run.error),
        str(run.error),
    ]
    for text in texts:
        assert TEST_TOKEN not in text
