"""The driver: runs handlers and fires the machine's triggers, one state at a time.

Handlers never fire triggers (a trigger fired from inside a transitions AsyncMachine callback
cancels the callbacks still in flight). The driver alone does, after each handler returns:
retry edges after a backoff while the state's attempt budget lasts, failure edges once it is
spent or the state's deadline passes, cancel edges when ``cancel()`` was called. After every
transition the state goes to the ``persist`` hook before the next handler runs, so a crash
leaves a state a later process can resume from: ``Driver.run`` starts wherever the state says.

The driver knows no state by name: what sets a state apart (cleanup's rules: it ignores
cancel, runs past the build's deadline, leaves as it was entered, ...) is declared in states/
as the state's properties, and the handlers are those registered for the machine's name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from transitions.extensions.asyncio import AsyncMachine

from kiln.errors import BuildError, PhaseTimeout, WithDiagnostics
from kiln.machine._outcome import CANCELLED, SUCCEEDED, Outcome, Trigger, fail, outcome_for
from kiln.machine._services import CheckpointFailed, Services
from kiln.machine._spec import MachineSpec, StateSpec
from kiln.machine._state import BuildState, ErrorRecord
from kiln.machine._transitions import Model, build_machine, enter, release
from kiln.machine.handlers import Handler, handlers_for

PersistHook = Callable[[BuildState], Awaitable[None]]

# The whole build's deadline is reported as a phase of its own.
OVERALL_PHASE = "build"


async def no_persist(state: BuildState) -> None:
    """The default store hook: keep nothing."""


class Driver:
    """Runs one build's state machine to a final state."""

    def __init__(
        self,
        services: Services,
        *,
        persist: PersistHook = no_persist,
        handlers: Mapping[str, Handler] | None = None,
    ) -> None:
        self._services = services
        self._spec: MachineSpec = services.spec
        self._persist = persist
        services.checkpoint_hook = persist
        machine = handlers_for(self._spec)
        self._handlers = machine.by_state if handlers is None else handlers
        self._explain = machine.explain
        self._task: asyncio.Task[Any] | None = None
        self._state: BuildState | None = None
        self._cancel = False
        # The live error behind state.error, with its cause chain; a resumed build only has
        # the persisted record.
        self.error: BaseException | None = None
        # The error of the current state's last failed attempt: a retry's reason, and the
        # cause a deadline names when it cuts the retries short.
        self._last_error: BaseException | None = None

    def cancel(self) -> None:
        """Ask the build to stop: it takes its state's cancel edge at the next await point (a
        state declaring `ignores_cancel` runs on, and leaves as a cancelled build)."""
        self._cancel = True
        state = self._state
        if state is None:
            return
        state.cancel_requested = True
        phase = self._spec.states.get(state.state)
        if self._task is not None and not (phase is not None and phase.ignores_cancel):
            self._task.cancel()

    async def run(self, state: BuildState) -> BuildState:
        """Drive ``state`` from the state it names to a final state, and return it."""
        self._state = state
        state.cancel_requested = state.cancel_requested or self._cancel
        model = Model()
        machine = build_machine(self._spec, model, state.state)
        try:
            return await self._drive(state, machine, model)
        finally:
            release(machine, model)

    async def _drive(self, state: BuildState, machine: AsyncMachine, model: Model) -> BuildState:
        self._begin(state)
        await self._persist(state)
        caller_cancelled = False
        while state.state not in self._spec.finals:
            try:
                outcome = await self._step(state)
                trigger = await self._resolve(state, outcome)
            except CheckpointFailed as failed:
                raise failed.original from None
            except asyncio.CancelledError:
                # The caller's task was cancelled: the build still goes through the states that
                # must run (a state declaring `reruns_when_interrupted` runs again; a second
                # cancellation gives up on it), then the cancellation goes on up.
                if caller_cancelled:
                    raise
                caller_cancelled = True
                _uncancel()
                state.cancel_requested = True
                if self._phase(state).reruns_when_interrupted:
                    continue
                trigger = Trigger.CANCEL
            await self._fire(machine, model, state, trigger)
        if caller_cancelled:
            raise asyncio.CancelledError
        return state

    def _phase(self, state: BuildState) -> StateSpec:
        return self._spec.states[state.state]

    def _begin(self, state: BuildState) -> None:
        now = self._services.clock.now()
        self._services.resumed = bool(state.created_at)
        if not state.created_at:
            state.created_at = now
            if state.options.deadline_s is not None:
                state.deadline_at = now + state.options.deadline_s
        # A resumed state's phase clock restarts: time spent with no process alive is not
        # the phase's fault. The overall deadline stays absolute.
        state.state_entered_at = now

    async def _step(self, state: BuildState) -> Outcome:
        """Run the current state's handler once, bounded by its deadline and by cancel()."""
        if state.cancel_requested and not self._phase(state).ignores_cancel:
            return CANCELLED
        name = state.state
        state.attempts[name] = state.attempts_in(name) + 1
        left, timeout_error = self._time_left(state)
        if left <= 0:
            return self._overran(state, timeout_error)
        self._task = asyncio.create_task(self._guarded(self._handlers[name], state, left))
        try:
            outcome: Outcome = await self._task
        except asyncio.CancelledError:
            if _caller_cancelled():
                raise
            # The handler recorded the build's result before the cancel took effect (the
            # platform answered complete: the image is registered), so the build succeeded
            # whatever was asked after that.
            return SUCCEEDED if state.result is not None else CANCELLED
        finally:
            self._task = None
        if isinstance(outcome.error, PhaseTimeout) and outcome.error.phase == name:
            return self._overran(state, outcome.error)
        return outcome

    def _overran(self, state: BuildState, error: PhaseTimeout) -> Outcome:
        """A phase past its deadline fails; one declaring `gives_up` warns and leaves as it was
        entered instead, as when its attempts run out (the outcome was decided before)."""
        gives_up = self._phase(state).gives_up
        if gives_up is None:
            return fail(error)
        self._services.warning(state, f"{gives_up.format(state=state)}: {error}")
        return self._way_out(state)

    def _way_out(self, state: BuildState) -> Outcome:
        """The edge out of a `leaves_as_entered` state that matches how it was entered. It adds
        no error: the one that sent the build there is already in the state."""
        return Outcome(Trigger(self._spec.way_out(state.state, state.outcome)))

    async def _guarded(self, handler: Handler, state: BuildState, limit_s: float) -> Outcome:
        """The handler's outcome; an exception becomes the retry or the fail edge."""
        _, timeout_error = self._time_left(state)
        try:
            async with asyncio.timeout(limit_s) as scope:
                return await handler(state, self._services)
        except TimeoutError as error:
            return fail(timeout_error) if scope.expired() else outcome_for(error)
        except Exception as error:
            return outcome_for(error)

    def _time_left(self, state: BuildState) -> tuple[float, PhaseTimeout]:
        """Seconds the current handler may run, and the error for overrunning them."""
        now = self._services.clock.now()
        phase = self._spec.states[state.state]
        left = phase.deadline_s - (now - state.state_entered_at)
        error = PhaseTimeout(phase.name, phase.deadline_s)
        overall = state.deadline_at
        if overall is None:
            return left, error
        if phase.grace_s is not None:
            # The state may outlast the overall deadline, by a bounded grace counted from the
            # later of the deadline and the state's entry: a build resumed long after its
            # deadline still gets the grace to delete its sandbox, not an instant give-up.
            ends = max(overall, state.state_entered_at) + phase.grace_s
            if ends - now < left:
                return ends - now, PhaseTimeout(phase.name, phase.grace_s)
            return left, error
        if overall - now < left:
            left = overall - now
            error = PhaseTimeout(OVERALL_PHASE, state.options.deadline_s or 0.0)
        return left, error

    async def _resolve(self, state: BuildState, outcome: Outcome) -> Trigger:
        """Turn an outcome into the trigger to fire: wait before retries, record failures."""
        if outcome.error is not None and not isinstance(outcome.error, PhaseTimeout):
            self._last_error = outcome.error
        leaves_as_entered = self._phase(state).leaves_as_entered
        if outcome.trigger is Trigger.SUCCEED and leaves_as_entered:
            outcome = self._way_out(state)
        if outcome.trigger is Trigger.RETRY:
            self._restart_count_after_progress(state, outcome)
            if self._may_retry(state):
                return await self._backoff(state, outcome)
            if leaves_as_entered:
                outcome = self._way_out(state)
            else:
                outcome = fail(outcome.error or BuildError(f"{state.state}: retry budget spent"))
        if outcome.trigger is Trigger.FAIL and outcome.error is not None:
            await self._record_failure(state, outcome.error)
        return outcome.trigger

    def _restart_count_after_progress(self, state: BuildState, outcome: Outcome) -> None:
        """The budget of a `progress_resets_attempts` state counts failures without progress:
        an attempt that progressed before failing leaves none behind it."""
        if outcome.progressed and self._spec.states[state.state].progress_resets_attempts:
            state.attempts[state.state] = 0

    def _may_retry(self, state: BuildState) -> bool:
        phase = self._spec.states[state.state]
        return Trigger.RETRY in phase.on and state.attempts_in(phase.name) < phase.attempts

    async def _backoff(self, state: BuildState, outcome: Outcome) -> Trigger:
        if state.cancel_requested and not self._phase(state).ignores_cancel:
            # cancel() came after the handler had ended and before this wait began: there was
            # no task for it to interrupt, so the wait must not start at all.
            return Trigger.CANCEL
        delay = self._spec.backoff_of(state.state).delay(state.attempts_in(state.state))
        left, _ = self._time_left(state)
        self._services.logger(state).info(
            "retrying", error=str(outcome.error), attempt=state.attempts_in(state.state)
        )
        self._task = asyncio.create_task(asyncio.sleep(max(0.0, min(delay, left))))
        try:
            await self._task
        except asyncio.CancelledError:
            if _caller_cancelled():
                raise
            return Trigger.CANCEL
        finally:
            self._task = None
        return Trigger.RETRY

    async def _record_failure(self, state: BuildState, error: BaseException) -> None:
        if self._phase(state).keeps_first_error and state.error is not None:
            return
        decorated = await self._decorate(state, error)
        self.error = decorated
        state.error = ErrorRecord(
            kind=type(decorated).__name__,
            message=str(decorated),
            hint=getattr(decorated, "hint", None),
            advice=tuple(_advice_of(decorated)),
            phase=state.state,
        )
        self._services.logger(state).warning("build failed", error=str(decorated))

    async def _decorate(self, state: BuildState, error: BaseException) -> BaseException:
        """The machine's explanation of ``error`` (diagnostics, the sandbox and build ids).

        A PhaseTimeout stays one, so callers can catch it by type, and names the ids and the
        last attempt's error itself; its sandbox was still deleted by cleanup.
        """
        if isinstance(error, PhaseTimeout):
            return error.in_context(
                during=state.state,
                sandbox_id=state.sandbox_id,
                build_id=state.build_id,
                last_error=self._last_error,
            )
        return await self._explain(
            state, self._services, error, diagnoses=self._phase(state).diagnoses
        )

    async def _fire(
        self, machine: AsyncMachine, model: Model, state: BuildState, trigger: Trigger
    ) -> None:
        source = state.state
        await machine.events[trigger.value].trigger(model)
        reason = None
        if trigger is Trigger.RETRY and self._last_error is not None:
            reason = str(self._last_error)
        if model.state != source:
            self._last_error = None
        event = enter(
            self._spec, state, trigger.value, model.state, self._services.clock.now(), reason
        )
        # Emitted first, so that the store hook writes the transition's event with its state: a
        # process killed right after the write leaves a log that shows the transition too.
        self._services.emit(state, event)
        await self._persist(state)


def _advice_of(error: BaseException) -> list[str]:
    while error is not None:
        if isinstance(error, WithDiagnostics):
            return error.advice
        error = getattr(error, "source", None)  # type: ignore[assignment]
    return []


def _caller_cancelled() -> bool:
    """Whether the task running the driver (not just the handler task) is being cancelled."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
