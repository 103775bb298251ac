"""Model level, rule-based: hypothesis plays the world around the driver (handler outcomes,
cancel requests, a phase's or the whole build's deadline passing, within one attempt or spent
across several, the process dying) and the invariants hold after every step.

A finished build that was killed and resumed on the way is replayed without its crashes from the
same decisions: the replay must take the same transitions and end in the same state (unless a
crash came once part of a phase's deadline was spent: a resume restarts the phase clock).
"""

from __future__ import annotations

import asyncio

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from properties.levels import examples
from properties.model import SPEC, SteppedBuild, check_all, comparable

OUTCOMES = st.sampled_from(("succeed", "succeed", "retry", "fail"))
# A decision as recorded for the replay: what happened, and the outcome kind it carried.
Action = tuple[str, str]


class DriverModel(RuleBasedStateMachine):
    # The declared machine driven; tests/properties/test_cas_model.py runs the CAS one.
    spec = SPEC

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.finished = 0
        self.build: SteppedBuild | None = None
        self.actions: list[Action] = []

    def _current(self) -> SteppedBuild:
        """The build in progress; a new one once the last has ended."""
        if self.build is None:
            self.build = SteppedBuild(self.loop, self.spec)
            self.actions = []
        return self.build

    def _after(self, build: SteppedBuild, action: Action) -> None:
        self.actions.append(action)
        check_all(self.spec, build)
        if build.final:
            if build.crashes and not build.phase_clock_restarted:
                self._check_replay(build)
            self.finished += 1
            self.build = None

    def _check_replay(self, build: SteppedBuild) -> None:
        replay = SteppedBuild(self.loop, self.spec)
        for what, kind in self.actions:
            apply(replay, what, kind)
        assert replay.final
        assert replay.transitions == build.transitions
        assert comparable(replay.result()) == comparable(build.result())

    @rule(kind=OUTCOMES)
    def handler_reports(self, kind: str) -> None:
        build = self._current()
        build.resolve(kind)
        self._after(build, ("resolve", kind))

    @rule()
    def cancel_requested(self) -> None:
        build = self._current()
        build.cancel()
        self._after(build, ("cancel", ""))

    @rule(kind=OUTCOMES)
    def deadline_passes(self, kind: str) -> None:
        build = self._current()
        build.expire(kind)
        self._after(build, ("expire", kind))

    @rule(attempts=st.integers(min_value=2, max_value=5))
    def deadline_spent_across_attempts(self, attempts: int) -> None:
        """Attempts that each use a share of the state's deadline and fail transiently: the
        deadline runs out across attempts, never within one."""
        build = self._current()
        name = build.current
        for _ in range(attempts):
            build.spend("retry")
            self._after(build, ("spend", "retry"))
            if self.build is not build or build.current != name:
                return

    @rule(kind=OUTCOMES)
    def build_deadline_passes(self, kind: str) -> None:
        build = self._current()
        build.overrun(kind)
        self._after(build, ("overrun", kind))

    @rule()
    def process_dies(self) -> None:
        # Not an action of the replay: the replay is the same build without its crashes.
        build = self._current()
        build.crash()
        check_all(self.spec, build)

    def teardown(self) -> None:
        # Finish the build in progress, so that it too meets the end-of-build checks.
        try:
            while self.build is not None:
                self.handler_reports("succeed")
        finally:
            self.loop.close()


def apply(build: SteppedBuild, what: str, kind: str) -> None:
    if what == "resolve":
        build.resolve(kind)
    elif what == "cancel":
        build.cancel()
    elif what == "overrun":
        build.overrun(kind)
    elif what == "spend":
        build.spend(kind)
    else:
        build.expire(kind)


def test_a_deadline_spent_across_attempts_fails_the_phase() -> None:
    """Three attempts of prepare each use 40% of its deadline and fail transiently: the fourth
    would start past the deadline, so it never runs and the build fails by timeout (a phase
    clock reset on every retry would give each attempt a whole deadline, and all five run)."""
    loop = asyncio.new_event_loop()
    try:
        build = SteppedBuild(loop)
        build.resolve("succeed")
        assert build.current == "prepare"
        for _ in range(3):
            build.spend("retry")
        assert build.final
        state = build.result()
        assert state.state == "failed"
        assert state.error is not None
        assert (state.error.kind, state.error.phase) == ("PhaseTimeout", "prepare")
        assert [name for name, _ in build.handler_runs].count("prepare") == 3
        check_all(SPEC, build)
    finally:
        loop.close()


TestDriverModel = DriverModel.TestCase
# A run is a few hundred milliseconds of real driver work: no per-example deadline.
TestDriverModel.settings = settings(max_examples=examples("model_rules"), deadline=None)
