"""Model level for the CAS machine (states/cas.toml): the real driver, its handlers replaced by
oracles that report what a generated path says, takes exactly that path, whatever it is: every
retry within its budget, a fail or cancel from any state, and `release` leaving the way the
build was heading when it entered it.

And the shared rule-based harness (tests/properties/model.py, test_model_machine.py) on the CAS
machine: generated outcomes, cancels, deadlines passing and process deaths with resumes from the
last persisted state, the Image Service played by the oracles; after every step the machine's
invariants hold, and exactly one remote build per submission, a declared final, no remote build
left running (check_remote_builds); a build killed on the way replays to the same end."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings

from kiln.errors import BuildError, ServerError
from kiln.machine import (
    CAS_MACHINE,
    BuildOptions,
    BuildState,
    CasProgress,
    Driver,
    Event,
    Outcome,
    Services,
    TransitionEvent,
    Trigger,
    load_machine_spec,
)
from kiln.plan import plan_dockerfile
from kiln.testing import without_backoff
from kiln.testing.strategies import Step, transition_sequences
from properties.levels import examples
from properties.model import SteppedBuild, check_all
from properties.test_model_machine import DriverModel
from support.paths import HELLO

SPEC = without_backoff(load_machine_spec(name=CAS_MACHINE))


def oracle(step: Step) -> Outcome:
    """What the handler of ``step.source`` reports so that the driver fires ``step.trigger``."""
    if SPEC.states[step.source].leaves_as_entered and step.trigger != Trigger.RETRY:
        # release leaves the way it was entered once its work is done.
        return Outcome(Trigger.SUCCEED)
    if step.trigger == Trigger.RETRY:
        error = ServerError("oracle: 503", status=503, transient=True)
        return Outcome(Trigger.RETRY, error, progressed=step.progressed)
    if step.trigger == Trigger.FAIL:
        return Outcome(Trigger.FAIL, BuildError(f"oracle: {step.source} failed for good"))
    return Outcome(Trigger(step.trigger))


def drive(path: tuple[Step, ...]) -> list[tuple[str, str, str]]:
    remaining = list(path)
    events: list[Event] = []

    def handler_for(name: str):  # type: ignore[no-untyped-def]
        async def handler(state: BuildState, services: Services) -> Outcome:
            step = remaining.pop(0)
            assert step.source == name == state.state
            return oracle(step)

        return handler

    services = Services(spec=SPEC, emit_event=events.append)
    handlers = {name: handler_for(name) for name in SPEC.states}
    driver = Driver(services, handlers=handlers)
    state = BuildState(
        plan=plan_dockerfile(HELLO),
        options=BuildOptions(cas=True),
        machine=CAS_MACHINE,
        cas=CasProgress(),
    )
    asyncio.run(driver.run(state))
    assert remaining == []
    assert state.state == path[-1].dest
    return [(e.source, e.trigger, e.dest) for e in events if isinstance(e, TransitionEvent)]


@settings(max_examples=examples("model_rules"), deadline=None)
@given(path=transition_sequences(spec=SPEC))
def test_the_driver_takes_exactly_the_declared_cas_path(path: tuple[Step, ...]) -> None:
    assert drive(path) == [(s.source, s.trigger, s.dest) for s in path]


class CasDriverModel(DriverModel):
    spec = SPEC


TestCasDriverModel = CasDriverModel.TestCase
TestCasDriverModel.settings = settings(max_examples=examples("model_rules"), deadline=None)


def test_a_crash_while_admitting_resumes_onto_the_same_remote_build() -> None:
    """The process dies after the admission reached the service: the resumed build sends the
    same persisted key, so the service has one build, which the build then finishes."""
    loop = asyncio.new_event_loop()
    try:
        build = SteppedBuild(loop, SPEC)
        while build.current != "create_build":
            build.resolve("succeed")
        build.crash()
        assert build.current == "create_build"
        while not build.final:
            build.resolve("succeed")
        check_all(SPEC, build)
        assert build.result().state == "done"
        assert build.service is not None and list(build.service.builds.values()) == ["succeeded"]
    finally:
        loop.close()
