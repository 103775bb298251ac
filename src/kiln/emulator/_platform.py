"""Platform API: template lookup, prepare, complete, and the seed's key introspection.

Both auth modes share the handlers: the token routes under ``/platform/v1`` (API key) and the
``/platform/v1/organizations/{org}/projects/{project}`` routes (PAT, with scope headers).
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from kiln.emulator._blobs import key_from_uri, uri_for
from kiln.emulator._errors import EmulatorError, bad_request, not_found
from kiln.emulator._http import authorize, public_url, require_token, state_of
from kiln.emulator._state import Build, EmulatorState, new_id
from kiln.emulator._validate import field, json_object, non_empty, optional

PLATFORM = "/platform/v1"
PAT_PREFIX = PLATFORM + "/organizations/{organization}/projects/{project}"
NODE_KINDS = ("base", "diff")
BUILDER = {
    "image": "tensorlake/rootfs-builder:emulated",
    "command": "tl-rootfs-build",
    "cpus": 2.0,
    "memoryMb": 4096,
    "diskMb": 30720,
}
# Opaque to clients, passed through into spec.json; it tells a reader where the spec came from.
RUNTIME_CONTRACT = {"runtime": "kiln-emulator", "version": 1}
# Legacy upload URLs expire like real pre-signed ones; the emulator does not enforce it.
UPLOAD_VALIDITY_S = 3600
INTROSPECTED_ORGANIZATION = "org-emulator"
INTROSPECTED_PROJECT = "proj-emulator"


async def lookup_template(request: Request) -> JSONResponse:
    authorize(request)
    name = request.path_params["name"]
    template = state_of(request).templates.by_name(name)
    if template is None:
        raise not_found(f"no sandbox template named {name!r}", code="TEMPLATE_NOT_FOUND")
    return JSONResponse(template)


def _parent(state: EmulatorState, body: dict[str, Any], kind: str) -> dict[str, Any] | None:
    payload = body.get("parentTemplate")
    if payload is None:
        if kind == "diff":
            raise bad_request(
                "rootfsNodeKind 'diff' needs a 'parentTemplate'", code="MISSING_FIELD"
            )
        return None
    if not isinstance(payload, dict):
        raise bad_request("field 'parentTemplate' must be an object or null", code="INVALID_FIELD")
    template_id = field(payload, "templateId", str, where="parentTemplate.")
    template = state.templates.by_id(template_id)
    if template is None:
        raise bad_request(
            f"parentTemplate.templateId {template_id!r} is not a registered template",
            code="UNKNOWN_TEMPLATE",
        )
    return {
        "parentManifestUri": template["snapshotUri"],
        "rootfsDiskBytes": template["rootfsDiskBytes"],
    }


def _additional_images(state: EmulatorState, body: dict[str, Any]) -> list[dict[str, Any]]:
    entries = optional(body, "additionalLocalImages", list, [])
    resolved = []
    for index, entry in enumerate(entries):
        where = f"additionalLocalImages[{index}]."
        if not isinstance(entry, dict):
            raise bad_request(f"{where[:-1]} must be an object", code="INVALID_FIELD")
        template = state.templates.by_id(field(entry, "templateId", str, where=where))
        resolved.append({**entry, "snapshotUri": template["snapshotUri"]} if template else entry)
    return resolved


def _snapshot_location(request: Request, build_id: str) -> dict[str, Any]:
    key = f"snapshots/{build_id}.tlsnap"
    if state_of(request).config.sign_mode == "new":
        return {"snapshotRelPath": key}
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + UPLOAD_VALIDITY_S))
    upload = {
        "kind": "single_put",
        "method": "PUT",
        "url": state_of(request).blobs.signed_url(public_url(request), key),
        "headers": {},
        "expiresAt": expires,
    }
    return {"snapshotUri": uri_for(key), "upload": upload}


async def prepare(request: Request) -> JSONResponse:
    authorize(request)
    state = state_of(request)
    body = await json_object(request)
    name = non_empty(field(body, "name", str), "name")
    non_empty(field(body, "dockerfile", str), "dockerfile")
    non_empty(field(body, "baseImage", str), "baseImage")
    public = optional(body, "public", bool, False)
    kind = optional(body, "rootfsNodeKind", str, "base")
    if kind not in NODE_KINDS:
        raise bad_request(f"field 'rootfsNodeKind' must be one of {NODE_KINDS}, got {kind!r}")
    parent = _parent(state, body, kind)
    build_id = new_id("build")
    location = _snapshot_location(request, build_id)
    build = Build(
        id=build_id,
        name=name,
        snapshot_id=new_id("snapshot"),
        snapshot_uri=location.get("snapshotUri") or uri_for(location["snapshotRelPath"]),
        rootfs_node_kind=kind,
        parent=parent,
        public=public,
    )
    state.builds[build_id] = build
    response = {
        "buildId": build.id,
        "snapshotId": build.snapshot_id,
        "rootfsNodeKind": kind,
        "builder": BUILDER,
        "parent": parent,
        "runtimeContract": RUNTIME_CONTRACT,
        "additionalLocalImages": _additional_images(state, body),
        **location,
    }
    return JSONResponse(response)


def _pending_build(state: EmulatorState, build_id: str) -> Build:
    build = state.builds.get(build_id)
    if build is None:
        raise not_found(f"no prepared build {build_id!r}", code="BUILD_NOT_FOUND")
    if build.completed:
        raise EmulatorError(
            409, "BUILD_ALREADY_COMPLETED", f"build {build_id!r} is already complete"
        )
    return build


def _check_snapshot(state: EmulatorState, build: Build, body: dict[str, Any]) -> str:
    """The snapshot named must be the one this build was told to produce, and must exist."""
    snapshot_id = field(body, "snapshotId", str)
    if snapshot_id != build.snapshot_id:
        raise bad_request(
            f"snapshotId {snapshot_id!r} is not the one prepared for {build.id} "
            f"({build.snapshot_id!r})"
        )
    uri = field(body, "snapshotUri", str)
    if uri != build.snapshot_uri:
        raise bad_request(
            f"snapshotUri {uri} is not where build {build.id} was told to upload "
            f"({build.snapshot_uri})"
        )
    if not state.blobs.exists(key_from_uri(uri)):
        raise bad_request(f"snapshotUri {uri} was never uploaded", code="SNAPSHOT_MISSING")
    return uri


def _parent_uri(build: Build, body: dict[str, Any]) -> str:
    uri = field(body, "parentManifestUri", str)
    expected = build.parent["parentManifestUri"] if build.parent else None
    if uri != expected:
        raise bad_request(f"parentManifestUri {uri} is not the prepared parent ({expected})")
    return uri


def _size(body: dict[str, Any], key: str) -> int:
    value = field(body, key, int)
    if value < 0:
        raise bad_request(f"field '{key}' must be >= 0, got {value}", code="INVALID_FIELD")
    return value


async def complete(request: Request) -> JSONResponse:
    authorize(request)
    state = state_of(request)
    body = await json_object(request)
    build = _pending_build(state, request.path_params["build_id"])
    kind = field(body, "rootfsNodeKind", str)
    if kind != build.rootfs_node_kind:
        raise bad_request(
            f"rootfsNodeKind {kind!r} does not match the prepared {build.rootfs_node_kind!r}"
        )
    template: dict[str, Any] = {
        "id": new_id("tmpl"),
        "name": build.name,
        "snapshotId": build.snapshot_id,
        "snapshotUri": _check_snapshot(state, build, body),
        "snapshotFormatVersion": field(body, "snapshotFormatVersion", str),
        "snapshotSizeBytes": _size(body, "snapshotSizeBytes"),
        "rootfsDiskBytes": _size(body, "rootfsDiskBytes"),
        "rootfsNodeKind": kind,
        "public": build.public,
        "buildId": build.id,
    }
    if kind == "diff":
        template["parentManifestUri"] = _parent_uri(build, body)
    build.completed = True
    state.templates.register(template)
    return JSONResponse(template)


async def introspect(request: Request) -> JSONResponse:
    require_token(request)
    return JSONResponse(
        {"organizationId": INTROSPECTED_ORGANIZATION, "projectId": INTROSPECTED_PROJECT}
    )


def routes() -> list[BaseRoute]:
    table: list[BaseRoute] = [Route(PLATFORM + "/keys/introspect", introspect, methods=["POST"])]
    for prefix in (PLATFORM, PAT_PREFIX):
        table += [
            Route(
                prefix + "/sandbox-templates/by-name/{name:path}", lookup_template, methods=["GET"]
            ),
            Route(prefix + "/sandbox-template-builds", prepare, methods=["POST"]),
            Route(
                prefix + "/sandbox-template-builds/{build_id}/complete", complete, methods=["POST"]
            ),
        ]
    return table
