"""cleanup: delete the builder sandbox, then leave towards the outcome the build reached."""

from __future__ import annotations

from kiln.errors import ApiError
from kiln.machine._outcome import CANCELLED, SUCCEEDED, Outcome, Trigger, retry
from kiln.machine._services import Services
from kiln.machine._state import BuildState

DONE = "done"
CANCELLED_OUTCOME = "cancelled"


async def cleanup(state: BuildState, services: Services) -> Outcome:
    """Re-entry: deletes again unless state.sandbox_deleted; a 404 counts as already deleted."""
    if state.sandbox_id is not None and not state.sandbox_deleted:
        try:
            await services.lifecycle(state).ensure_deleted(state.sandbox_id)
        except ApiError as error:
            services.warning(
                state,
                f"Failed to terminate rootfs builder sandbox {state.sandbox_id} "
                f"during cleanup: {error}",
            )
            if state.attempts_in(state.state) < services.spec.states[state.state].attempts:
                return retry(error)
        else:
            state.sandbox_deleted = True
    return way_out(state)


def way_out(state: BuildState) -> Outcome:
    """The edge that matches how the build went before cleanup began."""
    if state.outcome == DONE:
        return SUCCEEDED
    if state.outcome == CANCELLED_OUTCOME:
        return CANCELLED
    # The error that sent the build here is already in the state; this edge adds none.
    return Outcome(Trigger.FAIL)
