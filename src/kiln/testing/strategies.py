"""Hypothesis strategies for testing kiln and the services that embed it.

``transition_sequences()``
    Valid paths through the declared build machine (``states/build.toml``), retry loops within
    each state's budget included, as tuples of :class:`Step`. Cleanup leaves the way the build
    was heading when it entered cleanup, as the machine's driver does.
``fault_schedules()``
    :class:`~kiln.testing.FaultSchedule` values: which request fails how and when (status codes,
    connection resets, delays, cut streams), builder failures (exit code, OOM kill, ENOSPC) and a
    sandbox lost mid-build, for either upload path (the emulator's ``sign_mode``). A schedule
    knows what the build must end as (``expected_outcome``).
``dockerfiles()``
    Realistic multi-stage Dockerfiles: parser directives, global ARGs, heredocs, continuations,
    ``COPY --from``, ``RUN --mount``.

Importing this module needs ``hypothesis``; the rest of :mod:`kiln.testing` does not.
"""

from __future__ import annotations

from typing import Any

import attrs
from hypothesis import strategies as st

from kiln.emulator import SignMode
from kiln.machine import MachineSpec, Trigger, load_machine_spec
from kiln.testing._dockerfiles import dockerfiles
from kiln.testing._faults import (
    PERMANENT_STATUSES,
    PROXY_PHASES,
    TARGETS,
    TRANSIENT_STATUSES,
    FaultSchedule,
    RequestFault,
    Target,
)

# Retries after progress in one path at most: each restarts a budget, so paths stay finite.
MAX_PROGRESS_RESETS = 3
# Weights of each trigger at a state: mostly forward, so that paths reach the later phases.
_TRIGGER_WEIGHTS: dict[str, int] = {
    Trigger.SUCCEED: 6,
    Trigger.RETRY: 3,
    Trigger.FAIL: 1,
    Trigger.CANCEL: 1,
}
# Delays short enough to keep a run quick, long enough to reorder concurrent requests.
MAX_DELAY_MS = 50
# An SSE cut after this many events at most; the builder stand-in prints about a dozen lines.
MAX_CUT_EVENTS = 12
# Builder failures: killed by the kernel for memory, out of disk, or a plain non-zero exit.
BUILDER_FAULTS: tuple[dict[str, Any], ...] = (
    {"oom_kill": True},
    {"enospc": True},
    {"exit_code": 1},
    {"exit_code": 125},
)


@attrs.frozen
class Step:
    """One transition: the handler of ``source`` ran and its outcome fired ``trigger``."""

    source: str
    trigger: str
    dest: str
    # A retry whose attempt made progress first: in a state declaring
    # `progress_resets_attempts`, the attempt count starts again after it.
    progressed: bool = False


@st.composite
def transition_sequences(draw: st.DrawFn, spec: MachineSpec | None = None) -> tuple[Step, ...]:
    """A path from the initial state to a final state of ``spec`` (default: the declared one)."""
    spec = spec or load_machine_spec()
    state = spec.initial
    attempts: dict[str, int] = {}
    # The trigger that entered a `leaves_as_entered` state (cleanup) is also the one it leaves
    # by (the driver's rule).
    heading: str = Trigger.SUCCEED.value
    resets = 0
    steps: list[Step] = []
    while state not in spec.finals:
        attempts[state] = attempts.get(state, 0) + 1
        trigger = draw(_trigger(spec, state, attempts[state], heading))
        dest = spec.states[state].on[trigger]
        if dest != state and dest in spec.states and spec.states[dest].leaves_as_entered:
            heading = trigger
        progressed = (
            trigger == Trigger.RETRY
            and spec.states[state].progress_resets_attempts
            and resets < MAX_PROGRESS_RESETS
            and draw(st.booleans())
        )
        if progressed:
            resets += 1
            attempts[state] = 0
        steps.append(Step(state, trigger, dest, progressed))
        state = dest
    return tuple(steps)


def _trigger(spec: MachineSpec, state: str, attempt: int, heading: str) -> st.SearchStrategy[str]:
    phase = spec.states[state]
    may_retry = Trigger.RETRY in phase.on and attempt < phase.attempts
    if phase.leaves_as_entered:
        # Cleanup picks its exit from how the build went; only its retries are a choice.
        return st.sampled_from([Trigger.RETRY.value, heading] if may_retry else [heading])
    choices = [t for t in phase.on if t != Trigger.RETRY or may_retry]
    weighted = [t for t in choices for _ in range(_TRIGGER_WEIGHTS[t])]
    return st.sampled_from(weighted)


def fault_schedules(
    spec: MachineSpec | None = None,
    *,
    max_failures: int | None = None,
    sign_mode: SignMode = "legacy",
) -> st.SearchStrategy[FaultSchedule]:
    """Fault schedules for a Dockerfile build, within and beyond the budgets of ``spec``, against
    an emulator in ``sign_mode``.

    ``max_failures`` caps how often each fault fires and leaves out lost sandboxes (which spend a
    whole budget): for builds that retry with the declared backoff, as the library API does,
    where each retry waits a quarter of a second and more.
    """
    targets = tuple(t for t in TARGETS if sign_mode in t.sign_modes)
    return _fault_schedules(spec or load_machine_spec(), targets, max_failures, sign_mode)


@st.composite
def _fault_schedules(
    draw: st.DrawFn,
    spec: MachineSpec,
    targets: tuple[Target, ...],
    max_failures: int | None,
    sign_mode: SignMode,
) -> FaultSchedule:
    faults = draw(st.lists(_request_fault(spec, targets, max_failures), max_size=3))
    # One fault per phase and per kind of request (see FaultSchedule).
    by_target = {fault.target.name: fault for fault in faults}
    by_phase = {fault.phase: fault for fault in by_target.values()}
    # A lost sandbox fails every build it is in: keep it to one schedule in eight.
    lose = max_failures is None and draw(st.integers(0, 7)) == 0
    lost = draw(st.integers(0, len(PROXY_PHASES[sign_mode]) - 1)) if lose else None
    if lost is not None:
        # A lost sandbox answers every proxy request; other proxy faults would race it.
        by_phase = {p: f for p, f in by_phase.items() if not f.target.path.startswith("^/api/")}
    # A builder fault fails the build whatever else happens: keep it to one schedule in five.
    broken_builder = draw(st.integers(0, 4)) == 0
    builder = draw(st.sampled_from(BUILDER_FAULTS)) if broken_builder else {}
    return FaultSchedule(
        faults=tuple(by_phase.values()), builder=builder, sandbox_lost_at=lost, sign_mode=sign_mode
    )


@st.composite
def _request_fault(
    draw: st.DrawFn, spec: MachineSpec, targets: tuple[Target, ...], max_failures: int | None
) -> RequestFault:
    target: Target = draw(st.sampled_from(targets))
    after = draw(st.integers(0, len(target.phases) - 1))
    budget = spec.states[target.phases[after]].attempts
    action = draw(_action(target))
    # Up to the budget: both sides of "the retries were enough" are drawn. A cut costs at most
    # one attempt, maybe none: it stays within the budget to keep the verdict exact.
    most = budget - 1 if "cut_stream_after" in action else budget
    if max_failures is not None:
        most = min(most, max_failures)
    times = draw(st.integers(1, max(1, most)))
    return RequestFault(target=target, action=action, times=times, after=after)


def _action(target: Target) -> st.SearchStrategy[dict[str, Any]]:
    # Retried failures twice as often as permanent ones: the budgets are the interesting part.
    actions: list[st.SearchStrategy[dict[str, Any]]] = [
        st.sampled_from(TRANSIENT_STATUSES).map(lambda s: {"status": s}),
        st.sampled_from(TRANSIENT_STATUSES).map(lambda s: {"status": s}),
        st.just({"reset": True}),
        st.integers(1, MAX_DELAY_MS).map(lambda ms: {"delay_ms": ms}),
        st.sampled_from(PERMANENT_STATUSES).map(lambda s: {"status": s}),
    ]
    if target.name == "follow":
        actions.append(st.integers(0, MAX_CUT_EVENTS).map(lambda n: {"cut_stream_after": n}))
    return st.one_of(actions)


__all__ = ["Step", "dockerfiles", "fault_schedules", "transition_sequences"]
