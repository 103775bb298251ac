"""BuildState is plain data: it survives JSON and never carries a credential."""

from __future__ import annotations

from kiln.machine import BuildOptions, BuildState, ErrorRecord
from kiln.testing import TEST_TOKEN
from support.machine import hello_plan, import_plan


def test_a_fresh_state_round_trips_through_json() -> None:
    state = BuildState(plan=hello_plan(), options=BuildOptions(api_url="http://x", cpus=2.0))
    assert BuildState.from_json(state.to_json()) == state


def test_a_state_midway_round_trips_through_json() -> None:
    state = BuildState(plan=import_plan())
    state.state = "run_builder"
    state.attempts = {"prepare": 2, "run_builder": 1}
    state.prepared = {"buildId": "b1", "builder": {"cpus": 2.0}, "upload": {"url": "u"}}
    state.sandbox_id = "sbx-1"
    state.builder_pid = 7
    state.output_events_delivered = 12
    state.error = ErrorRecord(kind="BuildFailed", message="boom", advice=("more memory",))
    assert BuildState.from_json(state.to_json()) == state


async def test_a_finished_build_state_holds_no_token(emulator) -> None:  # type: ignore[no-untyped-def]
    from support.machine import run_to_end

    run = await run_to_end(emulator)
    assert run.state.state == "done"
    assert TEST_TOKEN not in run.state.to_json()
    assert BuildState.from_json(run.state.to_json()) == run.state
