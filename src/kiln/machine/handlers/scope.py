"""resolve_scope: credentials, auth mode and routes; no HTTP call (HEAD makes none here)."""

from __future__ import annotations

from kiln.machine._outcome import SUCCEEDED, Outcome
from kiln.machine._services import Services
from kiln.machine._state import BuildState

# Reference wording: the caller asked for the slower export path and should know its cost.
DOCKER_COMPAT_WARNING = (
    "Docker compatibility mode is enabled. This uses Docker/BuildKit export for rootfs "
    "materialization, which can be slower and may require a larger builder sandbox disk."
)


async def resolve_scope(state: BuildState, services: Services) -> Outcome:
    """Re-entry: derives the same settings again from the options and the environment."""
    services.settings(state)
    services.status(state, f"Selected image name: {state.plan.name}")
    for warning in state.plan.warnings:
        services.warning(state, warning)
    if state.options.docker_compat:
        services.warning(state, DOCKER_COMPAT_WARNING)
    return SUCCEEDED
