"""read_metadata and complete: turn the builder's metadata.json into a registered template."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Any

from kiln._tasks import finish_despite_cancel
from kiln.errors import ApiError, ResponseError
from kiln.machine._outcome import SUCCEEDED, Outcome
from kiln.machine._services import Services
from kiln.machine._state import BuildState
from kiln.machine.protocol import REMOTE_METADATA_PATH, PreparedView, complete_body

TEMPLATE_ID_KEY = "id"
SNAPSHOT_ID_KEY = "snapshotId"
# The platform's answer to a second complete of one build.
HTTP_CONFLICT = 409
MISSING_ID = "-"


async def read_metadata(state: BuildState, services: Services) -> Outcome:
    """Re-entry: parses the metadata again; the builder wrote it once and reading is idempotent.

    The builder's process printed it (state.builder_metadata): no request. Only when that
    output is missing (its end was never seen on a stream) is metadata.json read from the sandbox.
    """
    info = state.need_prepared()
    if state.builder_metadata is not None:
        raw = state.builder_metadata.encode()
    else:
        raw = await services.proxy(state).get_file(REMOTE_METADATA_PATH)
    metadata = _parse_metadata(raw)
    view = PreparedView(
        snapshot_id=info.snapshot_id,
        snapshot_uri=(state.prepared or {}).get("snapshotUri", info.snapshot_uri),
        rootfs_node_kind=info.rootfs_node_kind,
        parent_manifest_uri=info.parent_manifest_uri,
        rootfs_disk_bytes=state.rootfs_disk_bytes or 0,
    )
    state.complete_body = complete_body(metadata, prepared=view, signed_uri=state.signed_uri)
    return SUCCEEDED


async def complete(state: BuildState, services: Services) -> Outcome:
    """Re-entry: POSTs again unless state.result is set; a 409 over our own snapshot counts as done."""
    if state.result is None:
        services.status(state, "Completing image registration...")
        build_id = state.build_id or ""
        try:
            state.result = await _past_cancel(
                services.platform(state).complete(build_id, state.complete_body or {}), state
            )
        except ApiError as error:
            if error.status != HTTP_CONFLICT or not _may_have_completed(state, services):
                raise
            state.result = await _registered_by_us(state, services, error)
    template_id = state.result.get(TEMPLATE_ID_KEY) or MISSING_ID
    services.status(state, f"Image '{state.plan.name}' registered ({template_id})")
    return SUCCEEDED


async def _past_cancel(call: Coroutine[Any, Any, dict[str, Any]], state: BuildState) -> Any:
    """The answer to complete, even when a cancel arrives while it is on the wire.

    Once sent, a registration cannot be taken back: a cancel that arrives this late must not end
    the build 'cancelled' with its image registered. Wait for the answer and record it; the
    driver then takes the success edge (see Driver._step).
    """
    try:
        # A cancel asked for before the request leaves lands here, and nothing is sent.
        await asyncio.sleep(0)
    except asyncio.CancelledError:
        call.close()
        raise
    task = asyncio.ensure_future(call)
    try:
        return await finish_despite_cancel(task)
    except asyncio.CancelledError:
        if not task.cancelled() and task.exception() is None:
            state.result = task.result()
        raise


def _may_have_completed(state: BuildState, services: Services) -> bool:
    """Whether an earlier attempt (or a crashed process) may have completed this build."""
    return state.attempts_in(state.state) > 1 or services.resumed


async def _registered_by_us(
    state: BuildState, services: Services, conflict: ApiError
) -> dict[str, Any]:
    """The template an earlier, unanswered complete registered; else the conflict stands.

    The platform refuses a second complete of the same build. When the template registered
    under our name holds the snapshot this build produced, that earlier complete was ours and
    only its answer was lost.
    """
    template = await services.platform(state).get_template(state.plan.name)
    snapshot_id = (state.complete_body or {}).get(SNAPSHOT_ID_KEY)
    if template is None or snapshot_id is None or template.raw.get(SNAPSHOT_ID_KEY) != snapshot_id:
        raise conflict
    services.warning(state, f"Build {state.build_id} was already completed; using its template")
    return template.raw


def _parse_metadata(raw: bytes) -> dict[str, Any]:
    try:
        metadata = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResponseError(f"rootfs builder metadata is not valid JSON: {error}") from error
    if not isinstance(metadata, dict):
        raise ResponseError("rootfs builder metadata is not a JSON object")
    return metadata
