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
from properties.model import SPEC, SteppedBuild, check_all, comparable

# No path is longer than the sum of the attempt budgets.
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
        else:
            build.resolve(step.trigger)
        check_all(SPEC, build)
    assert build.final
    return build


@settings(max_examples=examples("model_paths"))
@given(path=transition_sequences())
def test_the_driver_takes_exactly_the_declared_path(
    loop: asyncio.AbstractEventLoop, path: tuple[Step, ...]
) -> None:
    build = follow(loop, path, crashes=set())
    assert build.transitions == [(s.source, s.trigger, s.dest) for s in path]
    assert build.result().outcome == path[-1].dest


@settings(max_examples=examples("model_paths"))
@given(path=transition_sequences(), crashes=st.sets(st.integers(0, MAX_PATH - 1), max_size=4))
def test_resuming_from_the_persisted_state_changes_nothing(
    loop: asyncio.AbstractEventLoop, path: tuple[Step, ...], crashes: set[int]
) -> None:
    plain = follow(loop, path, crashes=set())
    crashed = follow(loop, path, crashes)
    assert crashed.transitions == plain.transitions
    assert comparable(crashed.result()) == comparable(plain.result())
