"""The model-level harness: the real driver, step by step, with handlers replaced by oracles.

A test decides what each handler run reports (``resolve``), asks for a cancel, moves the fake
clock past a deadline, or kills the "process" running the driver (``crash``) and resumes the
build from the last state the persist hook received, as a new process would from the store.
No network: the oracles record in the state what the real handlers would (a build id, a sandbox
id, a result) and nothing else.

The same harness drives either declared machine (``SteppedBuild(loop, spec)``): on the CAS
machine (states/cas.toml) the oracles play the Image Service too (:class:`ImageService`): each
``create_build`` run sends the persisted Idempotency-Key before the test decides how it ends (the
request reaches the service even when the answer is lost or the process dies waiting for it),
``wait_build`` succeeding means the remote build succeeded, and ``release`` succeeding cancels it.
"""

from __future__ import annotations

import asyncio

import attrs

from kiln.errors import BuildError, ServerError
from kiln.machine import (
    CAS_MACHINE,
    BuildOptions,
    BuildState,
    CasProgress,
    Clock,
    Driver,
    Event,
    MachineSpec,
    Outcome,
    Services,
    TransitionEvent,
    Trigger,
)
from kiln.plan import BuildPlan, plan_dockerfile
from kiln.testing import without_backoff
from support.paths import REPO

SPEC = without_backoff()
PLAN: BuildPlan = plan_dockerfile(REPO / "examples" / "hello" / "Dockerfile")
START_TIME = 1_800_000_000.0
# The whole build's deadline (options.deadline_s): an hour, well past every phase's but one.
BUILD_DEADLINE_S = 3600.0
ORACLE_BUILD_ID = "build-oracle"
ORACLE_SANDBOX_ID = "sbx-oracle"
# Cleanup leaves the way the build was heading when it entered cleanup.
WAY_OUT = {"done": Trigger.SUCCEED, "failed": Trigger.FAIL, "cancelled": Trigger.CANCEL}
# The part of a state's deadline one attempt uses in `spend`: a few attempts together run past
# it, while no single one does.
ATTEMPT_SHARE = 0.4
# Fields that hold wall-clock readings; a resumed build legitimately restarts its phase clock.
CLOCK_FIELDS = ("created_at", "state_entered_at", "deadline_at")
Transition = tuple[str, str, str]
# What a handler reports when its attempt made progress (new builder output) before failing.
PROGRESSED_RETRY = "retry_progress"
# The CAS build's Idempotency-Key: fixed, so that a replay of the same decisions admits the same
# remote build (a real one is chosen at random at submission and persisted with the build).
ORACLE_REQUEST_ID = "r" * 32
# The CAS machine's states the Image Service oracle plays (the real handlers' names).
ADMISSION, WAIT = "create_build", "wait_build"
REMOTE_RUNNING, REMOTE_SUCCEEDED, REMOTE_CANCELLED = "running", "succeeded", "cancelled"


@attrs.define
class ImageService:
    """The Image Service as the CAS oracles see it: builds admitted by Idempotency-Key (the
    same key answers the same build), each with its status."""

    builds: dict[str, str] = attrs.field(factory=dict)

    def admit(self, request_id: str) -> str:
        self.builds.setdefault(request_id, REMOTE_RUNNING)
        return f"build_{request_id}"

    def end(self, request_id: str | None, status: str) -> None:
        if request_id is not None and self.builds.get(request_id) == REMOTE_RUNNING:
            self.builds[request_id] = status

    def unfinished(self) -> list[str]:
        return [key for key, status in self.builds.items() if status == REMOTE_RUNNING]


class Killed(BaseException):
    """The process running the driver died here: nothing after this point happened.

    A BaseException, so that neither the driver nor a handler can mistake it for an outcome.
    """


@attrs.define
class FakeClock:
    now: float = START_TIME

    def __call__(self) -> float:
        return self.now


def oracle_outcome(
    state: BuildState, spec: MachineSpec, kind: str, service: ImageService | None = None
) -> Outcome:
    """What the handler of ``state.state`` reports when the test chose ``kind``
    (``succeed``, ``retry`` or ``fail``); on the CAS machine, ``service`` plays the remote side."""
    if state.state == spec.cleanup:
        if service is not None and kind == "succeed" and state.cas is not None:
            service.end(state.cas.request_id, REMOTE_CANCELLED)
        return _cleanup_outcome(state, spec, deleted=kind == "succeed")
    if kind == "succeed":
        _record_success(state)
        if service is not None and state.state == WAIT and state.cas is not None:
            service.end(state.cas.request_id, REMOTE_SUCCEEDED)
        return Outcome(Trigger.SUCCEED)
    if kind in ("retry", PROGRESSED_RETRY):
        error = ServerError("oracle: 503", status=503, transient=True)
        return Outcome(Trigger.RETRY, error, progressed=kind == PROGRESSED_RETRY)
    return Outcome(Trigger.FAIL, BuildError(f"oracle: {state.state} failed for good"))


def _record_success(state: BuildState) -> None:
    # What the real handlers record, as far as the driver and later phases look at it.
    if state.state == "prepare":
        state.build_id = ORACLE_BUILD_ID
    elif state.state == "create_sandbox":
        state.sandbox_id = ORACLE_SANDBOX_ID
    elif state.state in ("complete", WAIT):
        state.result = {"name": state.plan.name}


def _cleanup_outcome(state: BuildState, spec: MachineSpec, *, deleted: bool) -> Outcome:
    """As the cleanup handler (the CAS machine's release): a failed delete (cancel) is retried
    within the budget, then left behind."""
    if deleted and state.cas is None:
        state.sandbox_deleted = True
    elif state.attempts_in(spec.cleanup) < spec.states[spec.cleanup].attempts:
        return Outcome(Trigger.RETRY, ServerError("oracle: delete failed", status=503))
    assert state.outcome is not None, "cleanup entered without a heading"
    return Outcome(WAY_OUT[state.outcome])


class SteppedBuild:
    """One build, driven by the real Driver on ``loop``, one handler run at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, spec: MachineSpec = SPEC) -> None:
        self.loop = loop
        self.spec = spec
        # The remote side of a CAS build; None on the build machine.
        self.service = ImageService() if spec.name == CAS_MACHINE else None
        self.clock = FakeClock()
        self.persisted: list[str] = []
        self.transitions: list[Transition] = []
        self.crashes = 0
        # When the current state was entered (or the build resumed, which restarts the phase
        # clock), by the fake clock; and, per handler run, its state and how long after that.
        self.entered_at = self.clock.now
        self.handler_runs: list[tuple[str, float]] = []
        # A resume restarts the phase clock (time with no process alive is not the phase's
        # fault): after a crash that came once part of a deadline was spent, the same build
        # without its crashes times out sooner, and no longer replays it.
        self.phase_clock_restarted = False
        # Retries reported after progress: each may restart its state's budget.
        self.progressed_retries = 0
        # Every handler run's state and what the test had it report.
        self.resolutions: list[tuple[str, str]] = []
        # Durable, like the store's cancel flag: a resumed build is told again.
        self.cancel_requested = False
        self._pending: asyncio.Future[str] | None = None
        self._changed = asyncio.Event()
        self._start(self._submitted())

    # -- what a test does ------------------------------------------------------------------

    @property
    def final(self) -> bool:
        return self.task.done()

    @property
    def current(self) -> str:
        return self.state.state

    def resolve(self, kind: str) -> None:
        """The pending handler run reports ``kind``."""
        assert self._pending is not None and not self._pending.done()
        self.progressed_retries += kind == PROGRESSED_RETRY
        self.resolutions.append((self.current, kind))
        self._pending.set_result(kind)
        self._settle()

    def cancel(self) -> None:
        self.cancel_requested = True
        self.driver.cancel()
        self._settle()

    def expire(self, kind: str) -> None:
        """The current state's deadline passes while its handler runs; it then reports ``kind``."""
        self.clock.now += self.spec.states[self.current].deadline_s + 1
        self.resolve(kind)

    def spend(self, kind: str) -> None:
        """A share of the current state's deadline passes while its handler runs; it then
        reports ``kind``."""
        self.clock.now += self.spec.states[self.current].deadline_s * ATTEMPT_SHARE
        self.resolve(kind)

    def overrun(self, kind: str) -> None:
        """The whole build's deadline passes while a handler runs; it then reports ``kind``."""
        assert self.state.deadline_at is not None
        self.clock.now = max(self.clock.now, self.state.deadline_at) + 1
        self.resolve(kind)

    def crash(self) -> None:
        """Kill the driver mid-handler and resume from the last persisted state."""
        assert self._pending is not None and not self._pending.done()
        self._pending.set_exception(Killed())
        self._settle()
        assert isinstance(self.task.exception(), Killed)
        self.crashes += 1
        self.phase_clock_restarted |= self.clock.now > self.entered_at
        self._start(BuildState.from_json(self.persisted[-1]))

    def result(self) -> BuildState:
        assert self.final
        return self.task.result()

    # -- the machinery ---------------------------------------------------------------------

    def _submitted(self) -> BuildState:
        """The build as submitted: a CAS build has its Idempotency-Key from the start."""
        if self.service is None:
            options = BuildOptions(deadline_s=BUILD_DEADLINE_S)
            return BuildState(plan=PLAN, options=options, id="b" * 32)
        return BuildState(
            plan=PLAN,
            options=BuildOptions(deadline_s=BUILD_DEADLINE_S, cas=True),
            id="b" * 32,
            state=self.spec.initial,
            machine=CAS_MACHINE,
            cas=CasProgress(request_id=ORACLE_REQUEST_ID),
        )

    def _start(self, state: BuildState) -> None:
        services = Services(spec=self.spec, emit_event=self._on_event, clock=Clock(now=self.clock))
        handlers = dict.fromkeys(self.spec.states, self._oracle)
        self.driver = Driver(services, persist=self._persist, handlers=handlers)
        if self.cancel_requested:
            self.driver.cancel()
        self.state = state
        self.entered_at = self.clock.now
        self.task = self.loop.create_task(self.driver.run(state))
        self.task.add_done_callback(lambda _: self._changed.set())
        self._settle()

    def _settle(self) -> None:
        """Run the loop until a handler waits for the test, or the build ended."""

        async def settled() -> None:
            while not self.task.done() and (self._pending is None or self._pending.done()):
                await self._changed.wait()
                self._changed.clear()

        self.loop.run_until_complete(settled())

    async def _oracle(self, state: BuildState, services: Services) -> Outcome:
        self.handler_runs.append((state.state, self.clock.now - self.entered_at))
        admitted: str | None = None
        if self.service is not None and state.state == ADMISSION and state.cas is not None:
            # The admission is sent before its answer: the service has the build whatever the
            # test decides next (a lost answer, a crash while waiting for it).
            admitted = self.service.admit(state.cas.request_id)
        self._pending = self.loop.create_future()
        self._changed.set()
        kind = await self._pending
        if admitted is not None and kind == "succeed":
            state.build_id = admitted
        return oracle_outcome(state, self.spec, kind, self.service)

    async def _persist(self, state: BuildState) -> None:
        self.persisted.append(state.to_json())

    def _on_event(self, event: Event) -> None:
        if isinstance(event, TransitionEvent):
            self.transitions.append((event.source, event.trigger, event.dest))
            # A retry stays in the state: its deadline bounds all attempts together.
            if event.dest != event.source:
                self.entered_at = self.clock.now


def comparable(state: BuildState) -> dict[str, object]:
    """The state as data, without its wall-clock readings."""
    data = state.to_dict()
    for field in CLOCK_FIELDS:
        data.pop(field)
    return data


# -- invariants ----------------------------------------------------------------------------


def check_declared(spec: MachineSpec, transitions: list[Transition]) -> None:
    declared = set(spec.edges())
    for transition in transitions:
        assert transition in declared, f"undeclared transition {transition}"


def check_cleanup_before_final(spec: MachineSpec, transitions: list[Transition]) -> None:
    """A build that entered a sandbox-holding state reaches its final state from cleanup; on the
    CAS machine, whose wait_build succeeds straight to done (its remote build ended itself),
    every other way to a final."""
    held = False
    for source, trigger, dest in transitions:
        held = held or spec.states[source].holds_sandbox
        if spec.name == CAS_MACHINE and trigger == Trigger.SUCCEED.value:
            continue
        if dest in spec.finals and held:
            assert source == spec.cleanup, f"{source} -> {dest} skipped cleanup"


def check_budgets(spec: MachineSpec, state: BuildState) -> None:
    for name, used in state.attempts.items():
        assert used <= spec.states[name].attempts, f"{name}: {used} attempts"


def check_bounded(spec: MachineSpec, transitions: list[Transition], progressed: int = 0) -> None:
    """Every transition is one handler run, so their number is bounded by the budgets' sum, plus
    one budget per retry after progress (in a state whose budget counts failures without it)."""
    renewable = max(
        (s.attempts for s in spec.states.values() if s.progress_resets_attempts), default=0
    )
    assert (
        len(transitions) <= sum(s.attempts for s in spec.states.values()) + progressed * renewable
    )


def check_phase_deadlines(spec: MachineSpec, build: SteppedBuild) -> None:
    """No handler starts once its state's deadline, counted from entering the state (not from
    the attempt), has passed."""
    for name, elapsed in build.handler_runs:
        limit = spec.states[name].deadline_s
        assert elapsed < limit, f"{name} ran a handler {elapsed:g}s into its {limit:g}s deadline"


def check_remote_builds(build: SteppedBuild) -> None:
    """A CAS build: exactly one remote build per submission (every admission, across crashes
    and retries, sent the same persisted key), and once the build ended: in a declared final,
    done only on a remote build that succeeded, and no remote build left running unless release
    ran and every attempt to cancel it failed (it then gives up with a warning)."""
    service = build.service
    if service is None:
        return
    assert len(service.builds) <= 1, f"one submission made remote builds {service.builds}"
    if not build.final:
        return
    state = build.result()
    assert state.state in build.spec.finals
    if state.state == build.spec.final_of(Trigger.SUCCEED):
        assert list(service.builds.values()) == [REMOTE_SUCCEEDED]
    release = build.spec.cleanup
    if service.unfinished():
        assert (release, "succeed") not in build.resolutions, "release ended, the remote runs"
        # Release may also give up unattempted, by its declared gives_up, when it is entered
        # past the build's deadline and its grace (a clock that jumped: an expired handler run).
        assert any(dest == release for _, _, dest in build.transitions), "never released"


def check_all(spec: MachineSpec, build: SteppedBuild) -> None:
    check_declared(spec, build.transitions)
    check_phase_deadlines(spec, build)
    check_cleanup_before_final(spec, build.transitions)
    check_budgets(spec, build.state)
    check_bounded(spec, build.transitions, build.progressed_retries)
    check_remote_builds(build)
