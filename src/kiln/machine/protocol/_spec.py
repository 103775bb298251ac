"""Signing requests, splicing signed blocks into the prepared spec, and spec.json
(docs/protocol.md#signing, docs/protocol.md#spec-json)."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from kiln.errors import ResponseError
from kiln.machine.protocol._layout import REMOTE_CONTEXT_DIR

MIB = 1024 * 1024
# Part size asked of the dataplane for the snapshot upload, as the official client asks it: with
# the part cap below it covers a rootfs of up to 625 GiB, while a failed part stays cheap to retry.
MULTIPART_PART_SIZE = 64 * MIB
# S3 caps a multipart upload at 10,000 parts, and the dataplane's sign endpoint enforces the
# same ceiling; asking for more would be refused.
MULTIPART_MAX_PARTS = 10_000
# Local images already on the sandbox's own disk need no download signature.
_LOCAL_URI_PREFIX = "file://"

_MALFORMED_HINT = "the platform's response is malformed; report it to Tensorlake"


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def _as_object(raw: object, what: str) -> dict[str, Any]:
    """A deep copy of `raw` as a dict: splicing must never mutate the caller's (persisted) data."""
    if not isinstance(raw, Mapping):
        raise ResponseError(f"{what} is not a JSON object", hint=_MALFORMED_HINT)
    return copy.deepcopy(dict(raw))


def put_artifact_request(rel_path: str, rootfs_disk_bytes: int) -> dict[str, Any]:
    """The sign-blob request for the snapshot upload, with a multipart hint sized to the rootfs.

    The snapshot cannot exceed the rootfs, so enough 64 MiB parts to hold the rootfs suffice.
    """
    max_parts = _ceil_div(_ceil_div(rootfs_disk_bytes, MIB), MULTIPART_PART_SIZE // MIB)
    return {
        "target": {"kind": "artifact", "rel_path": rel_path},
        "op": {
            "kind": "put_artifact",
            "multipart_hint": {
                "max_parts": min(max(max_parts, 1), MULTIPART_MAX_PARTS),
                "part_size_bytes": MULTIPART_PART_SIZE,
            },
        },
    }


def get_blob_request(uri: str) -> dict[str, Any]:
    """The sign-blob request for a download of `uri` (a parent manifest or a local image)."""
    return {"target": {"kind": "blob", "uri": uri}, "op": {"kind": "get_blob"}}


def sign_targets(prepared_raw: Mapping[str, Any]) -> list[tuple[int, str]]:
    """`(index, snapshotUri)` of the prepared `additionalLocalImages` that need a download signed.

    An entry needs one when its snapshot is remote (not `file://`) and the platform did not
    already give it a `download` block (a null `download` counts as none).
    """
    images = prepared_raw.get("additionalLocalImages")
    if not isinstance(images, list):
        return []
    targets = []
    for index, image in enumerate(images):
        if not isinstance(image, Mapping) or image.get("download") is not None:
            continue
        uri = image.get("snapshotUri")
        if isinstance(uri, str) and not uri.startswith(_LOCAL_URI_PREFIX):
            targets.append((index, uri))
    return targets


def splice_signed_upload(
    raw: Mapping[str, Any], signed: Mapping[str, Any]
) -> tuple[dict[str, Any], str]:
    """The prepared spec with the dataplane's signed upload in place, and the snapshot uri.

    The signed uri replaces any `snapshotUri` the platform prepared: the snapshot is written where
    the signature allows, and `complete` must register that location.
    """
    uri = signed.get("uri")
    if not isinstance(uri, str):
        raise ResponseError("dataplane signed upload response is missing uri", hint=_MALFORMED_HINT)
    spliced = _as_object(raw, "prepared spec")
    spliced["snapshotUri"] = uri
    spliced["upload"] = copy.deepcopy(dict(signed))
    return spliced, uri


def splice_downloads(
    raw: Mapping[str, Any],
    *,
    parent: Mapping[str, Any] | None,
    images: Mapping[int, Mapping[str, Any]],
) -> dict[str, Any]:
    """The prepared spec with signed downloads: `parent.download` and, per index from
    :func:`sign_targets`, `additionalLocalImages[index].download`."""
    spliced = _as_object(raw, "prepared spec")
    if parent is not None:
        spliced["parent"] = _as_object(spliced.get("parent"), "prepared parent")
        spliced["parent"]["download"] = copy.deepcopy(dict(parent))
    entries = spliced.get("additionalLocalImages")
    for index, download in images.items():
        if not isinstance(entries, list) or not 0 <= index < len(entries):
            raise ResponseError(
                f"prepared spec has no additionalLocalImages[{index}]", hint=_MALFORMED_HINT
            )
        entries[index] = _as_object(entries[index], f"additionalLocalImages[{index}]")
        entries[index]["download"] = copy.deepcopy(dict(download))
    return spliced


def build_spec(
    prepared_raw: Mapping[str, Any],
    *,
    dockerfile: str,
    base_image: str,
    import_reference: str | None,
    rootfs_disk_bytes: int,
    docker_config_json: str | None,
    docker_compat: bool,
) -> dict[str, Any]:
    """The builder's spec.json: the prepared spec (opaque keys kept) plus the build's inputs.

    `contextDir` is set even for imports, where it stays empty: the builder expects the key.
    """
    spec = _as_object(prepared_raw, "platform API rootfs build spec")
    spec["dockerfile"] = dockerfile
    spec["contextDir"] = REMOTE_CONTEXT_DIR
    spec["baseImage"] = base_image
    if import_reference is not None:
        # Routes the builder to pull this reference straight into the rootfs instead of building.
        spec["importImageReference"] = import_reference
    spec["rootfsDiskBytes"] = rootfs_disk_bytes
    if docker_config_json is not None:
        spec["dockerConfigJson"] = docker_config_json
    if docker_compat:
        spec["dockerCompat"] = True
    return spec


def spec_json_bytes(spec: Mapping[str, Any]) -> bytes:
    """spec.json as written to the sandbox: pretty-printed UTF-8, keys in insertion order."""
    return json.dumps(spec, indent=2, ensure_ascii=False).encode("utf-8")
