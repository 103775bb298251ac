"""resolve_scope: credentials, auth mode and routes; no HTTP call (HEAD makes none here)."""

from __future__ import annotations

from kiln.machine._outcome import SUCCEEDED, Outcome
from kiln.machine._services import Services
from kiln.machine._state import BuildState


async def resolve_scope(state: BuildState, services: Services) -> Outcome:
    """Re-entry: derives the same settings again from the options and the environment."""
    services.settings(state)
    services.status(state, f"Selected image name: {state.plan.name}")
    for warning in state.plan.warnings:
        services.warning(state, warning)
    return SUCCEEDED
