"""The emulator's own surface under ``/_emulator/`` (never part of the Tensorlake API).

Builder behaviour, introspection for tests (sandboxes, processes, templates), reset, and the blob
store's HTTP face that signed URLs point at. Fault rules and the request log are served by the
network middleware in front of the app.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from kiln.emulator._blobs import check_key, key_from_uri
from kiln.emulator._config import BuilderBehaviour
from kiln.emulator._errors import bad_request, not_found
from kiln.emulator._http import copy_body, require_length, state_of
from kiln.emulator._validate import json_object, optional

ADMIN = "/_emulator"
# The reason a sandbox terminated through this surface reports, unless the caller names one.
INJECTED_TERMINATION = "terminated by the emulator (injected fault)"
_BEHAVIOUR_FIELDS: dict[str, type] = {
    "exit_code": int,
    "oom_kill": bool,
    "enospc": bool,
    "signal": int,
    "duration_ms": int,
    "log_lines": int,
    "line_pace_ms": int,
}


async def set_builder(request: Request) -> JSONResponse:
    """Replace the builder's behaviour; fields not given take the configured defaults."""
    state = state_of(request)
    body = await json_object(request)
    unknown = sorted(set(body) - set(_BEHAVIOUR_FIELDS))
    if unknown:
        raise bad_request(f"unknown builder fields {unknown}; known: {sorted(_BEHAVIOUR_FIELDS)}")
    defaults = state.config.builder
    values = {
        name: optional(body, name, kind, getattr(defaults, name))
        for name, kind in _BEHAVIOUR_FIELDS.items()
    }
    try:
        state.behaviour = BuilderBehaviour(**values)
    except ValueError as problem:
        raise bad_request(str(problem), code="INVALID_FIELD") from None
    return JSONResponse(attrs.asdict(state.behaviour))


async def get_builder(request: Request) -> JSONResponse:
    return JSONResponse(attrs.asdict(state_of(request).behaviour))


async def list_sandboxes(request: Request) -> JSONResponse:
    """Every sandbox ever created since the last reset, with its status: the leak check."""
    state = state_of(request)
    state.reap()
    now = time.monotonic()
    sandboxes = [
        {
            "sandbox_id": s.id,
            "namespace": s.namespace,
            "status": s.status(now),
            "image": s.image,
            "created_at": s.created_at,
            "termination_reason": s.terminated_reason,
        }
        for s in state.sandboxes.values()
    ]
    return JSONResponse({"sandboxes": sandboxes})


async def list_processes(request: Request) -> JSONResponse:
    """Every process started, per sandbox, with argv and the user it ran as."""
    state = state_of(request)
    processes: list[dict[str, Any]] = [
        {"sandbox_id": s.id, "user": p.user, **p.info()}
        for s in state.sandboxes.values()
        for p in s.processes.values()
    ]
    return JSONResponse({"processes": processes})


async def terminate_sandbox(request: Request) -> JSONResponse:
    """Terminate a sandbox now, whatever its status: a sandbox that dies while it is still
    pending (the platform reports it ``terminated``, never ``running``), or one lost mid-build."""
    state = state_of(request)
    sandbox_id = request.path_params["sandbox_id"]
    sandbox = state.sandbox(sandbox_id)
    if sandbox is None:
        raise not_found(f"no sandbox {sandbox_id!r} (GET {ADMIN}/sandboxes lists them)")
    body = await json_object(request)
    sandbox.terminate(optional(body, "reason", str, INJECTED_TERMINATION))
    return JSONResponse(
        {
            "sandbox_id": sandbox.id,
            "status": sandbox.status(time.monotonic()),
            "termination_reason": sandbox.terminated_reason,
        }
    )


async def list_templates(request: Request) -> JSONResponse:
    return JSONResponse({"templates": state_of(request).templates.all()})


async def delete_template(request: Request) -> JSONResponse:
    """A template deleted on the platform (the build API has no call for it)."""
    name = request.path_params["name"]
    if not state_of(request).templates.remove(name):
        raise not_found(f"no sandbox template named {name!r}", code="TEMPLATE_NOT_FOUND")
    return JSONResponse({"deleted": name})


async def reset(request: Request) -> JSONResponse:
    state_of(request).reset()
    return JSONResponse({"reset": True})


def _part_number(request: Request) -> int | None:
    raw = request.query_params.get("partNumber")
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise bad_request(f"partNumber must be a positive integer, got {raw!r}")
    return int(raw)


async def put_blob(request: Request) -> JSONResponse:
    """The signed upload target: a whole object, or one part of a multipart upload, streamed to
    disk in batches (a large snapshot never sits in memory)."""
    blobs = state_of(request).blobs
    require_length(request)
    key = check_key(request.path_params["key"])
    part = _part_number(request)
    if part is None:
        target = blobs.writer(key)
    else:
        upload_id = request.query_params.get("uploadId") or "default"
        target = blobs.part_writer(key, upload_id, part)
    with target as handle:
        size = await copy_body(request, handle)
    return JSONResponse({"key": key, "size": size})


async def get_blob(request: Request) -> Response:
    return FileResponse(state_of(request).blobs.file(request.path_params["key"]))


async def get_blob_by_uri(request: Request) -> Response:
    uri = request.query_params.get("uri")
    if not uri:
        raise bad_request("missing query parameter 'uri' (s3://kiln-emulator/<key>)")
    return FileResponse(state_of(request).blobs.file(key_from_uri(uri)))


def routes() -> list[BaseRoute]:
    return [
        Route(ADMIN + "/builder", set_builder, methods=["POST"]),
        Route(ADMIN + "/builder", get_builder, methods=["GET"]),
        Route(ADMIN + "/sandboxes", list_sandboxes, methods=["GET"]),
        Route(ADMIN + "/sandboxes/{sandbox_id}/terminate", terminate_sandbox, methods=["POST"]),
        Route(ADMIN + "/processes", list_processes, methods=["GET"]),
        Route(ADMIN + "/templates", list_templates, methods=["GET"]),
        Route(ADMIN + "/templates/{name:path}", delete_template, methods=["DELETE"]),
        Route(ADMIN + "/reset", reset, methods=["POST"]),
        Route(ADMIN + "/blobs", get_blob_by_uri, methods=["GET"]),
        Route(ADMIN + "/blobs/{key:path}", put_blob, methods=["PUT"]),
        Route(ADMIN + "/blobs/{key:path}", get_blob, methods=["GET"]),
    ]
