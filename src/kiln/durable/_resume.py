"""Getting a persisted build ready to run again in this process.

The handlers already know how to be entered a second time (each one's docstring says how); what
only a resume has to decide is whether the world still matches the state: a cancel requested
while nobody ran the build, and a builder sandbox that may have disappeared meanwhile.
"""

from __future__ import annotations

import attrs
import cattrs

from kiln.errors import ApiError, UnreadableBuild
from kiln.machine import (
    SCHEMA_VERSION,
    BuildState,
    ErrorRecord,
    MachineSpec,
    Services,
    Trigger,
    event_entry,
    intervene,
)
from kiln.store import BuildRecord, Owner

SANDBOX_LOST = "SandboxLost"
# What a fresh state keeps from the old one when a lost sandbox makes it start over (the
# declared start_over edge leads to the state where everything that belonged to the lost
# sandbox is made again: the prepared build, the signed upload, the context): who and what it
# builds, where it goes, when it started (the overall deadline stays absolute), what it learned
# about the server (a refused chunked upload will be refused again), and the sandboxes it may
# have left.
_KEPT_ON_RETRY = (
    "plan",
    "options",
    "id",
    "state",
    "created_at",
    "deadline_at",
    "cancel_requested",
    "chunked_upload_refused",
    "unrecorded_sandboxes",
)

Event = tuple[str, dict[str, object]]


def load_state(record: BuildRecord) -> BuildState:
    """The machine state persisted in ``record``."""
    if record.schema_version > SCHEMA_VERSION:
        raise UnreadableBuild(
            f"build {record.id} was written by a newer kiln (state schema"
            f" {record.schema_version}; this kiln reads up to {SCHEMA_VERSION})",
            hint="resume it with the kiln version that started it, or a newer one",
        )
    try:
        return BuildState.from_dict(record.data)
    except cattrs.BaseValidationError as error:
        raise UnreadableBuild(
            f"build {record.id}: its persisted state cannot be read ({error})",
            hint="the record is damaged; `kiln status` still shows what was kept",
        ) from error


async def prepare_resume(
    state: BuildState,
    record: BuildRecord,
    services: Services,
    *,
    owner: Owner,
    retry_lost_sandbox: bool,
) -> list[Event]:
    """Bring ``state`` up to date before ``owner`` runs it again; returns events for the log."""
    spec = services.spec
    resumed = {"state": state.state, "version": record.version, "owner": owner.describe()}
    events: list[Event] = [("resumed", resumed)]
    state.cancel_requested = state.cancel_requested or record.cancel_requested
    if _needs_sandbox_check(state, spec) and await _sandbox_lost(state, services):
        trigger = Trigger.START_OVER if retry_lost_sandbox else Trigger.SANDBOX_LOST
        events += await _lose_sandbox(state, spec, trigger, services.clock.now())
    return events


def _needs_sandbox_check(state: BuildState, spec: MachineSpec) -> bool:
    """Whether the build is in a state a lost sandbox may be declared to leave, with a sandbox."""
    lost = spec.interventions.get(Trigger.SANDBOX_LOST)
    return (
        lost is not None
        and lost.leaves(state.state)
        and state.sandbox_id is not None
        and not state.sandbox_deleted
        and not state.cancel_requested
    )


async def _sandbox_lost(state: BuildState, services: Services) -> bool:
    """Whether the lifecycle API says the sandbox is gone; an unclear answer means it is not."""
    try:
        return await services.lifecycle(state).is_gone(state.need_sandbox_id())
    except ApiError:
        return False


async def _lose_sandbox(
    state: BuildState, spec: MachineSpec, trigger: Trigger, now: float
) -> list[Event]:
    """Fire the lost sandbox's declared edge: start over (the state reset), or fail through
    cleanup, which confirms the sandbox is gone and ends the build as failed."""
    sandbox_id = state.sandbox_id
    where = state.state
    message = (
        f"builder sandbox {sandbox_id} is gone (the build was in {where!r} when its process"
        " stopped)"
    )
    if trigger is Trigger.SANDBOX_LOST:
        state.error = ErrorRecord(
            kind=SANDBOX_LOST,
            message=f"{message}; the build cannot continue without it",
            hint=(
                "build again, or resume with --retry-lost-sandbox to start over from"
                f" {spec.interventions[Trigger.START_OVER].dest}"
            ),
        )
    transition = await intervene(spec, state, trigger, now, reason=message)
    if trigger is Trigger.START_OVER:
        _start_over(state)
    then = state.state if trigger is Trigger.START_OVER else state.outcome
    # The log entry that tells what resume found; it is named after the trigger it fired with
    # either way, as it was before these edges were declared.
    lost: Event = (
        Trigger.SANDBOX_LOST.value,
        {"sandbox_id": sandbox_id, "state": where, "then": then},
    )
    return [event_entry(transition), lost]


def _start_over(state: BuildState) -> None:
    """Reset every field of ``state`` except the kept ones."""
    fresh = BuildState(
        **{name: getattr(state, name) for name in _KEPT_ON_RETRY},
    )
    for field in attrs.fields(BuildState):
        setattr(state, field.name, getattr(fresh, field.name))
