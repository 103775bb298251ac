"""The Image Service's wire (``/images/v4``), declared once: what requests carry, what answers hold.

Field names and shapes are the ones the official client (``tensorlake`` 0.5.163) sends and parses
(docs/image-service.md has the trace). Requests are checked here, at the boundary, and a bad one
is an :class:`ImageServiceError` naming the field; answers are built from these classes only.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import attrs

BuildKind = Literal["dockerfile", "import"]
BUILD_KINDS: tuple[BuildKind, ...] = ("dockerfile", "import")
# Build status and phase values, as the client's enums spell them.
PENDING = "pending"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
AWAITING_CONTEXT = "awaiting_context"
STARTING_BUILDER = "starting_builder"
EXECUTING = "executing"
SNAPSHOTTING = "snapshotting"
PUBLISHING = "publishing"
FINISHED = "finished"
# Cancel outcomes.
OUTCOME_CANCELLED = "cancelled"
ALREADY_CANCELLED = "already_cancelled"
ALREADY_COMPLETED = "already_completed"
ALREADY_FAILED = "already_failed"
NOT_ADMITTED = "not_admitted"
# `image_scope` is sent only for public images, with this value.
GLOBAL_SCOPE = "global"
# What the client sends when the caller gives no builder resources.
DEFAULT_BUILDER_CPUS = 2.0
DEFAULT_BUILDER_MEMORY_MB = 4096
# The client refuses longer names itself; the service does too.
MAX_NAME_CHARS = 255
IMAGE_ID_PREFIX = "image_"
_SNAKE_CODE = re.compile(r"^[a-z][a-z0-9_]*$")


class ImageServiceError(Exception):
    """A refusal as the Image Service answers it: ``{"code", "message", ...details}``.

    The client reads ``message`` for its own error text and takes its error family from the
    HTTP status (400 usage, 401/403 auth, other statuses service), except for the codes it knows
    by name (``not_found``, ``image_build_in_progress``), whose details it passes through.
    """

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        assert _SNAKE_CODE.match(code), code
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}


def invalid(message: str) -> ImageServiceError:
    return ImageServiceError(400, "invalid_request", message)


def not_found(message: str, **details: Any) -> ImageServiceError:
    return ImageServiceError(404, "not_found", message, **details)


def _require(body: dict[str, Any], key: str, kind: type, what: str) -> Any:
    value = body.get(key)
    if value is None:
        raise invalid(f"missing required field '{key}'")
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise invalid(f"field '{key}' must be {what}, got {type(value).__name__}")
    return value


def _optional(body: dict[str, Any], key: str, kind: type, what: str, default: Any) -> Any:
    return default if body.get(key) is None else _require(body, key, kind, what)


def _number(body: dict[str, Any], key: str, default: float) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise invalid(f"field '{key}' must be a number > 0, got {value!r}")
    return float(value)


@attrs.frozen
class Parent:
    """A parent image the client resolved: its reference as written and the image id it pins."""

    reference: str
    public_id: str

    @classmethod
    def parse(cls, raw: Any, index: int) -> Parent:
        if not isinstance(raw, dict):
            raise invalid(f"parents[{index}] must be an object")
        reference = raw.get("reference")
        public_id = raw.get("public_id")
        if not isinstance(reference, str) or not reference:
            raise invalid(f"parents[{index}].reference must be a non-empty string")
        if not isinstance(public_id, str) or not public_id.startswith(IMAGE_ID_PREFIX):
            raise invalid(f"parents[{index}].public_id must be an {IMAGE_ID_PREFIX}... image id")
        return cls(reference, public_id)


@attrs.frozen
class BuildRequest:
    """``POST /images/v4/builds``: a Dockerfile build (context uploaded after admission) or a
    registry import. ``registry_credentials_json`` is a Docker config with secrets in it: it is
    handed to the builder and to nothing else (no repr, no log, no introspection)."""

    kind: BuildKind
    name: str
    disk_mb: int
    dockerfile_path: str | None = None
    build_args: dict[str, str] = attrs.field(factory=dict)
    parents: tuple[Parent, ...] = ()
    image_ref: str | None = None
    public: bool = False
    cpus: float = DEFAULT_BUILDER_CPUS
    memory_mb: int = DEFAULT_BUILDER_MEMORY_MB
    registry_credentials_json: str | None = attrs.field(default=None, repr=False)

    @classmethod
    def parse(cls, body: dict[str, Any]) -> BuildRequest:
        kind = _require(body, "kind", str, "a string")
        if kind not in BUILD_KINDS:
            raise invalid(f"field 'kind' must be one of {list(BUILD_KINDS)}, got {kind!r}")
        name = _require(body, "name", str, "a string").strip()
        if not name or len(name) > MAX_NAME_CHARS:
            raise invalid(f"field 'name' must hold 1 to {MAX_NAME_CHARS} characters")
        disk_mb = _require(body, "disk_mb", int, "an integer")
        if disk_mb <= 0:
            raise invalid(f"field 'disk_mb' must be > 0, got {disk_mb}")
        resources = _optional(body, "builder_resources", dict, "an object", {})
        scope = _optional(body, "image_scope", str, "a string", None)
        if scope not in (None, GLOBAL_SCOPE):
            raise invalid(f"field 'image_scope' must be {GLOBAL_SCOPE!r} when given, got {scope!r}")
        common: dict[str, Any] = {
            "kind": kind,
            "name": name,
            "disk_mb": disk_mb,
            "public": scope == GLOBAL_SCOPE,
            "cpus": _number(resources, "cpus", DEFAULT_BUILDER_CPUS),
            "memory_mb": int(_number(resources, "memory_mb", DEFAULT_BUILDER_MEMORY_MB)),
            "registry_credentials_json": _optional(
                body, "registry_credentials_json", str, "a string", None
            ),
        }
        if kind == "import":
            return cls(**common, image_ref=_require(body, "image_ref", str, "a string"))
        return cls(
            **common,
            dockerfile_path=_dockerfile_path(_require(body, "dockerfile_path", str, "a string")),
            build_args=_build_args(_optional(body, "build_args", dict, "an object", {})),
            parents=tuple(
                Parent.parse(raw, i)
                for i, raw in enumerate(_optional(body, "parents", list, "a list", []))
            ),
        )

    def fingerprint(self) -> dict[str, Any]:
        """What makes two admissions the same request (an Idempotency-Key replay must match)."""
        return attrs.asdict(self)


def _dockerfile_path(value: str) -> str:
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if not parts or value.startswith("/") or ".." in parts:
        raise invalid(
            f"field 'dockerfile_path' must be a relative path inside the build context, "
            f"got {value!r}"
        )
    return "/".join(parts)


def _build_args(value: dict[str, Any]) -> dict[str, str]:
    for key, arg in value.items():
        if not key or not isinstance(arg, str):
            raise invalid(f"build_args must map names to strings, got {key!r}: {arg!r}")
    return dict(value)


@attrs.frozen
class ContextUpload:
    """Where the build context goes: a pre-signed URL (no auth) and the largest body it takes."""

    url: str
    max_bytes: int


@attrs.frozen
class ImageWire:
    """An image as ``/images/v4`` answers it (the client's ``ImageServiceImage``, all required)."""

    id: str
    name: str
    snapshot_id: str
    global_: bool
    physical_size_bytes: int
    logical_size_bytes: int
    created_at: str
    updated_at: str

    def to_wire(self) -> dict[str, Any]:
        wire = attrs.asdict(self)
        wire["global"] = wire.pop("global_")
        return wire


@attrs.frozen
class BuildWire:
    """A build record (the client's ``BuildInfo``); ``result`` only once it succeeded."""

    build_id: str
    status: str
    kind: str
    name: str
    phase: str
    attempt_no: int
    client_request_id: str
    builder_sandbox_id: str | None
    error: str | None
    result: ImageWire | None
    operation_deadline_ms: int
    created_at_ms: int
    updated_at_ms: int

    def to_wire(self, context_upload: ContextUpload | None = None) -> dict[str, Any]:
        wire = attrs.asdict(self, recurse=False)
        wire["result"] = None if self.result is None else self.result.to_wire()
        if context_upload is not None:
            wire["context_upload"] = attrs.asdict(context_upload)
        return wire


@attrs.frozen
class CancelRequest:
    """``POST /images/v4/builds/cancel``: exactly one selector."""

    build_id: str | None
    client_request_id: str | None

    @classmethod
    def parse(cls, body: dict[str, Any]) -> CancelRequest:
        build_id = _optional(body, "build_id", str, "a string", None)
        request_id = _optional(body, "client_request_id", str, "a string", None)
        if (build_id is None) == (request_id is None):
            raise invalid("send exactly one of 'build_id' or 'client_request_id'")
        return cls(build_id, request_id)


@attrs.frozen
class SealRequest:
    """``POST /images/v4/builds/{id}/context/seal``: the SHA-256 of the uploaded tar, hex."""

    digest: str

    @classmethod
    def parse(cls, body: dict[str, Any]) -> SealRequest:
        digest = _require(body, "digest", str, "a string")
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise invalid(
                f"field 'digest' must be 64 lowercase hex digits (SHA-256), got {digest!r}"
            )
        return cls(digest)
