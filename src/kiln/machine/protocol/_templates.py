"""Template lookups → prepare payloads, and the prepare request body (docs/protocol.md#prepare)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kiln.errors import ResponseError, UsageError

# Snapshot formats a template can carry. The durable archive is what the rootfs builder
# materialises; CAS (content-addressed streaming) templates belong to the Image Service path
# (states/cas.toml), so a CAS hit must stop a builder-sandbox build before anything is created.
CAS_FORMAT = "content_addressed_streaming_v1"
DURABLE_FORMAT = "durable_archive_v1"

# A build is a diff on top of a parent template exactly when the parent lookup hit.
NODE_KIND_DIFF = "diff"
NODE_KIND_BASE = "base"

_MALFORMED_HINT = "the platform's template lookup response is malformed; report it to Tensorlake"


def _required_field(reference: str, raw: Mapping[str, Any], key: str, what: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str):
        raise ResponseError(
            f"platform returned a template lookup for '{reference}' without {what}",
            hint=_MALFORMED_HINT,
        )
    return value


def template_payload(reference: str, template_raw: Mapping[str, Any]) -> dict[str, Any]:
    """The prepare payload for a template found under `reference` (the user's exact string).

    Kind and snapshot format are deliberately not checked here: HEAD accepts any kind and format,
    and only CAS hits are rejected, separately, once every lookup is done.
    """
    return {
        "templateId": _required_field(reference, template_raw, "id", "an id"),
        "name": _required_field(reference, template_raw, "name", "a name"),
        "reference": reference,
        "snapshotId": _required_field(reference, template_raw, "snapshotId", "a snapshot id"),
        "public": template_raw.get("public") is True,
    }


def is_cas_template(template_raw: Mapping[str, Any]) -> bool:
    """Whether a looked-up template is stored in the content-addressed streaming format."""
    return template_raw.get("snapshotFormatVersion") == CAS_FORMAT


def reject_cas_templates(
    parent: tuple[str, Mapping[str, Any]] | None,
    additional: Sequence[tuple[str, Mapping[str, Any]]],
) -> None:
    """Fail on the first CAS template, parent first, given `(reference, template)` lookup hits."""
    hits = [parent, *additional] if parent is not None else list(additional)
    for reference, template_raw in hits:
        if is_cas_template(template_raw):
            raise UsageError(
                f"image '{reference}' resolves to a content-addressed (CAS) template, "
                "which a builder-sandbox build cannot build on",
                hint=(
                    "build this image on the Image Service: add --cas (cas=True in the library), "
                    "or refer to a non-CAS image"
                ),
            )


def prepare_body(
    *,
    name: str,
    dockerfile: str,
    base_image: str,
    public: bool,
    parent: Mapping[str, Any] | None,
    additional: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """The body of `POST …/sandbox-template-builds`. `rootfsFormat` is never sent."""
    return {
        "name": name,
        "dockerfile": dockerfile,
        "baseImage": base_image,
        "public": public,
        "rootfsNodeKind": NODE_KIND_DIFF if parent is not None else NODE_KIND_BASE,
        "parentTemplate": dict(parent) if parent is not None else None,
        "additionalLocalImages": [dict(item) for item in additional],
    }
