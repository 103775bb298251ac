"""sign: the new path's dataplane signatures (docs/protocol.md#signing); nothing to do on the legacy
path."""

from __future__ import annotations

import copy
from typing import Any

from kiln.machine._outcome import SUCCEEDED, Outcome
from kiln.machine._services import Services
from kiln.machine._state import BuildState
from kiln.machine.protocol import (
    get_blob_request,
    put_artifact_request,
    sign_targets,
    splice_signed_upload,
)

_DOWNLOAD_KEY = "download"


async def sign(state: BuildState, services: Services) -> Outcome:
    """Re-entry: signs again from the prepared spec unless state.signed; signatures are fresh."""
    info = state.need_prepared()
    if state.signed or info.snapshot_rel_path is None:
        state.signed = True
        return SUCCEEDED
    proxy = services.proxy(state)
    raw: dict[str, Any] = copy.deepcopy(state.prepared or {})
    rootfs = state.rootfs_disk_bytes or 0
    upload = await proxy.sign_blob(put_artifact_request(info.snapshot_rel_path, rootfs))
    # The first proxy request on this path: once it answers, failures get diagnostics.
    state.proxy_ready = True
    raw, uri = splice_signed_upload(raw, upload)
    if info.parent_manifest_uri is not None and isinstance(raw.get("parent"), dict):
        raw["parent"][_DOWNLOAD_KEY] = await proxy.sign_blob(
            get_blob_request(info.parent_manifest_uri)
        )
    for index, blob_uri in sign_targets(raw):
        signed = await proxy.sign_blob(get_blob_request(blob_uri))
        raw["additionalLocalImages"][index][_DOWNLOAD_KEY] = signed
    state.prepared = raw
    state.signed_uri = uri
    state.signed = True
    return SUCCEEDED
