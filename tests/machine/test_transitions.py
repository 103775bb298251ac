"""Firing the declared interventions through the machine: only declared edges, recorded as every
transition is (issue 15)."""

from __future__ import annotations

import pytest

from kiln.errors import BuildError
from kiln.machine import (
    BuildState,
    Trigger,
    fire,
    intervene,
    load_machine_spec,
    machine_names,
)
from kiln.plan import plan_import

SPEC = load_machine_spec()


def _state_in(name: str) -> BuildState:
    state = BuildState(plan=plan_import("python:3.12-slim", name="t"))
    state.state = name
    state.state_entered_at = 100.0
    return state


async def test_an_intervention_into_cleanup_records_the_outcome_it_enters_as() -> None:
    state = _state_in("run_builder")
    event = await intervene(SPEC, state, Trigger.SANDBOX_LOST, now=130.0, reason="gone")
    assert (event.source, event.dest, event.trigger) == ("run_builder", "cleanup", "sandbox_lost")
    assert (event.duration_s, event.reason) == (30.0, "gone")
    assert state.state == "cleanup" and state.state_entered_at == 130.0
    assert state.outcome == SPEC.final_of(Trigger.FAIL), "cleanup will leave as a failed build"


async def test_an_intervention_into_a_final_records_that_final() -> None:
    state = _state_in("cleanup")
    await intervene(SPEC, state, Trigger.REAPED, now=101.0)
    assert state.state == state.outcome == "failed"


async def test_an_undeclared_edge_is_refused() -> None:
    state = _state_in("resolve_scope")
    with pytest.raises(BuildError, match="no 'sandbox_lost' edge from 'resolve_scope'"):
        await intervene(SPEC, state, Trigger.SANDBOX_LOST, now=101.0)
    assert state.state == "resolve_scope", "nothing recorded"


async def test_an_edge_from_every_state_leaves_one_this_kiln_does_not_know() -> None:
    assert await fire(SPEC, "a_state_of_a_newer_kiln", Trigger.UNREADABLE) == "failed"
    with pytest.raises(BuildError):
        await fire(SPEC, "a_state_of_a_newer_kiln", Trigger.SUCCEED)


def test_every_trigger_the_code_fires_is_declared_by_a_machine() -> None:
    declared = set().union(*(load_machine_spec(name=n).triggers for n in machine_names()))
    assert {str(trigger) for trigger in Trigger} <= declared
