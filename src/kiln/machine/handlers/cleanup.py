"""cleanup: delete the builder sandbox. Where the build goes then is the state's declared rule
(``leaves_as_entered``): the driver takes the way out that matches how cleanup was entered."""

from __future__ import annotations

from kiln.errors import ApiError
from kiln.machine._outcome import SUCCEEDED, Outcome, retry
from kiln.machine._services import Services
from kiln.machine._state import BuildState


async def cleanup(state: BuildState, services: Services) -> Outcome:
    """Re-entry: deletes again unless state.sandbox_deleted; a 404 counts as already deleted."""
    if state.sandbox_id is not None and not state.sandbox_deleted:
        try:
            await services.lifecycle(state).ensure_deleted(state.sandbox_id)
        except ApiError as error:
            # A warning each time: once the retry budget is spent the build leaves as it went,
            # and the sandbox is left to `kiln reap`.
            services.warning(
                state,
                f"Failed to terminate rootfs builder sandbox {state.sandbox_id} "
                f"during cleanup: {error}",
            )
            return retry(error)
        state.sandbox_deleted = True
    return SUCCEEDED
