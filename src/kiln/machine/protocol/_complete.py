"""The builder's metadata.json → the body of `POST …/complete`
(docs/protocol.md#metadata-and-complete)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import attrs

from kiln.errors import ResponseError
from kiln.machine.protocol._templates import CAS_FORMAT, NODE_KIND_DIFF

# The builder reports this `rootfs_format` when it produced a content-addressed streaming image;
# the platform then takes the size from `image_size_bytes` and the disk size from the client.
CAS_STREAMING_ROOTFS_FORMAT = "cas-streaming"
# The builder writes sizes as unsigned 64-bit numbers, sometimes as decimal strings.
_U64_MAX = 2**64 - 1
_UNSIGNED_DECIMAL = re.compile(r"\+?[0-9]+")

_BUILDER_HINT = "the rootfs builder wrote incomplete metadata; retry the build, or report it"


@attrs.frozen
class PreparedView:
    """What `complete` needs from the prepare response, plus the client's rootfs size
    (docs/protocol.md#sizing)."""

    snapshot_id: str
    snapshot_uri: str | None
    rootfs_node_kind: str
    parent_manifest_uri: str | None
    rootfs_disk_bytes: int


def parse_metadata(data: bytes) -> dict[str, Any]:
    """metadata.json as read back from the sandbox; it must be a JSON object."""
    try:
        metadata = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResponseError(
            f"rootfs builder metadata is not valid JSON: {exc}", hint=_BUILDER_HINT
        ) from None
    if not isinstance(metadata, dict):
        raise ResponseError("rootfs builder metadata is not a JSON object", hint=_BUILDER_HINT)
    return metadata


def _field(metadata: Mapping[str, Any], snake_key: str) -> Any:
    """The snake_case key if present (even when null), else its camelCase twin."""
    if snake_key in metadata:
        return metadata[snake_key]
    head, *rest = snake_key.split("_")
    return metadata.get(head + "".join(word.capitalize() for word in rest))


def _string(metadata: Mapping[str, Any], snake_key: str) -> str | None:
    value = _field(metadata, snake_key)
    return value if isinstance(value, str) else None


def _required_string(metadata: Mapping[str, Any], snake_key: str) -> str:
    value = _string(metadata, snake_key)
    if value is None:
        raise ResponseError(f"rootfs builder metadata is missing {snake_key}", hint=_BUILDER_HINT)
    return value


def _required_u64(metadata: Mapping[str, Any], snake_key: str) -> int:
    value = _field(metadata, snake_key)
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _UNSIGNED_DECIMAL.fullmatch(value):
        number = int(value)
    if number is None or not 0 <= number <= _U64_MAX:
        raise ResponseError(
            f"rootfs builder metadata is missing numeric {snake_key}", hint=_BUILDER_HINT
        )
    return number


def _snapshot_uri(
    metadata: Mapping[str, Any], prepared: PreparedView, signed_uri: str | None
) -> str:
    reported = _string(metadata, "snapshot_uri")
    if signed_uri is not None:
        # The snapshot can only have been written where the dataplane signed the upload.
        if reported is not None and reported != signed_uri:
            raise ResponseError(
                f"rootfs builder metadata snapshot_uri {reported} did not match "
                f"dataplane signed uri {signed_uri}",
                hint=_BUILDER_HINT,
            )
        return signed_uri
    uri = reported if reported is not None else prepared.snapshot_uri
    if uri is None:
        raise ResponseError("rootfs build completed without snapshot_uri", hint=_BUILDER_HINT)
    return uri


def _or(value: str | None, fallback: str) -> str:
    # An empty string the builder reported is still what it reported; only absence falls back.
    return fallback if value is None else value


def complete_body(
    metadata: Mapping[str, Any], *, prepared: PreparedView, signed_uri: str | None
) -> dict[str, Any]:
    """The complete request: the builder's report, falling back to what prepare promised."""
    kind = _or(_string(metadata, "rootfs_node_kind"), prepared.rootfs_node_kind)
    parent_uri = _string(metadata, "parent_manifest_uri")
    if parent_uri is None and kind == NODE_KIND_DIFF:
        parent_uri = prepared.parent_manifest_uri
    if kind == NODE_KIND_DIFF and parent_uri is None:
        raise ResponseError(
            "rootfs diff build completed without parent_manifest_uri", hint=_BUILDER_HINT
        )
    body: dict[str, Any] = {
        "snapshotId": _or(_string(metadata, "snapshot_id"), prepared.snapshot_id),
        "snapshotUri": _snapshot_uri(metadata, prepared, signed_uri),
    }
    is_cas = _string(metadata, "rootfs_format") == CAS_STREAMING_ROOTFS_FORMAT
    if is_cas:
        body["snapshotFormatVersion"] = CAS_FORMAT
        body["snapshotSizeBytes"] = _required_u64(metadata, "image_size_bytes")
        body["rootfsDiskBytes"] = prepared.rootfs_disk_bytes
    else:
        body["snapshotFormatVersion"] = _required_string(metadata, "snapshot_format_version")
        body["snapshotSizeBytes"] = _required_u64(metadata, "snapshot_size_bytes")
        body["rootfsDiskBytes"] = _required_u64(metadata, "rootfs_disk_bytes")
    body["rootfsNodeKind"] = kind
    if parent_uri is not None:
        body["parentManifestUri"] = parent_uri
    if is_cas:
        body["rootfsFormat"] = CAS_STREAMING_ROOTFS_FORMAT
    return body
