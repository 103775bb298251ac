"""Model level, path by path: the driver follows every valid path through the declared machine,
and killing it anywhere and resuming from the persisted state changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.testing.strategies import Step, transition_sequences
from properties.levels import examples
from properties.model import PROGRESSED_RETRY, SPEC, SteppedBuild, check_all, comparable

# No deadline per example: a long path (retries after progress renew a budget) on a loaded CI
# machine takes longer than hypothesis's 200 ms default, which would fail on timing alone.
# No path is longer than the sum of the attempt budgets (retries after progress renew one).
MAX_PATH = sum(state.attempts for state in SPEC.states.values())


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def follow(
    loop: asyncio.AbstractEventLoop, path: tuple[Step, ...], crashes: set[int]
) -> SteppedBuild:
    """Make the handlers report what ``path`` says; kill the driver before each step in
    ``crashes``."""
    build = SteppedBuild(loop)
    for index, step in enumerate(path):
        if index in crashes:
            build.crash()
        assert build.current == step.source
        if step.source == SPEC.cleanup:
            # Cleanup retries when its delete failed; otherwise it leaves by its heading.
            build.resolve("retry" if step.trigger == "retry" else "succeed")
        elif step.trigger == "cancel":
            build.cancel()
        elif step.progressed:
            build.resolve(PROGRESSED_RETRY)
        else:
            build.resolve(step.trigger)
        check_all(SPEC, build)
    assert build.final
    return build


@settings(max_examples=examples("model_paths"), deadline=None)
@given(path=transition_sequences())
def test_the_driver_takes_exactly_the_declared_path(
    loop: asyncio.AbstractEventLoop, path: tuple[Step, ...]
) -> None:
    build = follow(loop, path, crashes=set())
    assert build.transitions == [(s.source, s.trigger, s.dest) for s in path]
    assert build.result().outcome == path[-1].dest


@settings(max_examples=examples("model_paths"), deadline=None)
@given(path=transition_sequences(), crashes=st.sets(st.integers(0, MAX_PATH - 1), max_size=4))
def test_resuming_from_the_persisted_state_changes_nothing(
    loop: asyncio.AbstractEventLoop, path: tuple[Step, ...], crashes: set[int]
) -> None:
    plain = follow(loop, path, crashes=set())
    crashed = follow(loop, path, crashes)
    assert crashed.transitions == plain.transitions
    assert comparable(crashed.result()) == comparable(plain.result())


def _path_through_run_builder(retries: list[bool]) -> tuple[Step, ...]:
    """The happy path, with run_builder retried once per entry of ``retries`` (True: that
    attempt made progress before failing)."""
    path: list[Step] = []
    state = SPEC.initial
    while state not in SPEC.finals:
        if state == "run_builder":
            path += [Step(state, "retry", state, progressed) for progressed in retries]
        dest = SPEC.states[state].on["succeed"]
        path.append(Step(state, "succeed", dest))
        state = dest
    return tuple(path)


def test_retries_after_progress_renew_the_builder_budget(loop: asyncio.AbstractEventLoop) -> None:
    # Twice the budget's worth of failures, each stretch one short of it: the build goes on.
    budget = SPEC.states["run_builder"].attempts
    stretch = [False] * (budget - 2) + [True]
    build = follow(loop, _path_through_run_builder(stretch * 3), crashes={12, 30})
    assert build.result().outcome == "done"


def test_failures_without_progress_still_end_the_builder(loop: asyncio.AbstractEventLoop) -> None:
    budget = SPEC.states["run_builder"].attempts
    build = SteppedBuild(loop)
    while build.current != "run_builder":
        build.resolve("succeed")
    build.resolve(PROGRESSED_RETRY)
    for _ in range(budget):
        build.resolve("retry")
        check_all(SPEC, build)
    assert build.current == SPEC.cleanup
    build.resolve("succeed")
    assert build.result().outcome == "failed"
