"""Proxy API: the in-sandbox daemon (processes, files, health, blob signing).

Requests are routed by ``Host: <id>.local`` or ``X-Tensorlake-Sandbox-Id``. Every proxied request
counts as traffic that keeps its sandbox alive (the keepalive contract). Refusals follow the real
proxy: an unknown sandbox is a 502 ``PROXY_ERROR``, a sandbox that is not running is a 400
``... is not running``; clients treat both as transient.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from kiln.emulator._blobs import check_key, key_from_uri, uri_for
from kiln.emulator._errors import EmulatorError, bad_request, not_found
from kiln.emulator._http import copy_body, public_url, require_length, require_token, state_of
from kiln.emulator._process import Process
from kiln.emulator._sandbox import RUNNING, Sandbox
from kiln.emulator._sse import limits_of, sse_body
from kiln.emulator._state import ProcessRequest
from kiln.emulator._validate import field, json_object, non_empty, optional, positive
from kiln.emulator._vfs import SANDBOX_USER, FsError, normalize

API = "/api/v1"
SANDBOX_HOST_SUFFIX = ".local"
SANDBOX_HEADER = "x-tensorlake-sandbox-id"
SSE_MEDIA_TYPE = "text/event-stream"
OCTET_STREAM = "application/octet-stream"
DEFAULT_PART_SIZE = 64 * 1024 * 1024
DEFAULT_MAX_PARTS = 1
MAX_PARTS = 10000
_FS_STATUS = {
    "not_found": 404,
    "permission": 403,
    "invalid": 400,
    "exists": 409,
    "not_dir": 400,
    "is_dir": 400,
}


def _sandbox_id(request: Request) -> str | None:
    host = request.headers.get("host", "").rsplit(":", 1)[0]
    if host.endswith(SANDBOX_HOST_SUFFIX) and len(host) > len(SANDBOX_HOST_SUFFIX):
        return host.removesuffix(SANDBOX_HOST_SUFFIX)
    return request.headers.get(SANDBOX_HEADER)


def _proxy_error(message: str) -> EmulatorError:
    return EmulatorError(502, "PROXY_ERROR", f"PROXY_ERROR: Failed to proxy request: {message}")


def routed(request: Request) -> Sandbox:
    """The running sandbox this request addresses, refreshed as alive."""
    require_token(request)
    sandbox_id = _sandbox_id(request)
    if not sandbox_id:
        raise _proxy_error(f"no sandbox addressed: send Host: <id>{SANDBOX_HOST_SUFFIX}")
    sandbox = state_of(request).sandbox(sandbox_id)
    if sandbox is None:
        raise _proxy_error("sandbox not found")
    now = time.monotonic()
    status = sandbox.status(now)
    if status != RUNNING:
        raise bad_request(f"sandbox {sandbox_id} is not running (status: {status})", "NOT_RUNNING")
    sandbox.touch(now)
    return sandbox


def _fs_error(problem: FsError) -> EmulatorError:
    return EmulatorError(_FS_STATUS[problem.kind], problem.kind.upper(), problem.message)


def _process_request(sandbox: Sandbox, body: dict[str, Any]) -> ProcessRequest:
    args = optional(body, "args", list, [])
    if not all(isinstance(arg, str) for arg in args):
        raise bad_request("field 'args' must be a list of strings", code="INVALID_FIELD")
    user = optional(body, "user", str, SANDBOX_USER)
    if user not in ("root", SANDBOX_USER):
        raise bad_request(f"field 'user' must be \"root\" or absent, got {user!r}")
    working_dir = optional(body, "working_dir", str, "/")
    try:
        working_dir = normalize(working_dir)
    except FsError as problem:
        raise _fs_error(problem) from None
    if not sandbox.fs.is_dir(working_dir):
        raise bad_request(f"working_dir {working_dir} does not exist", code="INVALID_FIELD")
    # Built-in commands read no environment, but a malformed one is still the client's bug.
    optional(body, "env", dict, {})
    has_timeout = body.get("timeout") is not None
    return ProcessRequest(
        command=non_empty(field(body, "command", str), "command"),
        args=args,
        root=user == "root",
        working_dir=working_dir,
        timeout_s=positive(field(body, "timeout", float), "timeout") if has_timeout else None,
    )


async def _start(request: Request) -> Process:
    sandbox = routed(request)
    spec = _process_request(sandbox, await json_object(request))
    return state_of(request).start_process(sandbox, spec)


async def start_process(request: Request) -> JSONResponse:
    return JSONResponse((await _start(request)).info())


async def list_processes(request: Request) -> JSONResponse:
    sandbox = routed(request)
    return JSONResponse({"processes": [p.info() for p in sandbox.processes.values()]})


def _process(request: Request) -> Process:
    sandbox = routed(request)
    raw = request.path_params["pid"]
    process = sandbox.processes.get(int(raw)) if raw.isdigit() else None
    if process is None:
        raise not_found(f"no process {raw} in sandbox {sandbox.id}", code="PROCESS_NOT_FOUND")
    return process


async def get_process(request: Request) -> JSONResponse:
    return JSONResponse(_process(request).info())


def _event_stream(request: Request, events: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    body = sse_body(events, limits_of(state_of(request).config))
    return StreamingResponse(body, media_type=SSE_MEDIA_TYPE, headers={"Cache-Control": "no-cache"})


async def follow(request: Request) -> StreamingResponse:
    return _event_stream(request, _process(request).follow())


async def _run_events(process: Process) -> AsyncIterator[dict[str, Any]]:
    yield {"pid": process.pid, "started_at": process.started_at}
    async for line in process.follow():
        yield line
    end = await process.wait()
    yield {"exit_code": end.exit_code, "signal": end.signal, "oom_killed": end.oom_killed}


async def run_process(request: Request) -> StreamingResponse:
    return _event_stream(request, _run_events(await _start(request)))


def _file_path(request: Request) -> str:
    path = request.query_params.get("path")
    if not path:
        raise bad_request("missing query parameter 'path' (an absolute path in the sandbox)")
    try:
        return normalize(path)
    except FsError as problem:
        raise _fs_error(problem) from None


async def put_file(request: Request) -> Response:
    """Stream the raw body to the file, in batches, so a large context never sits in memory."""
    sandbox = routed(request)
    require_length(request)
    path = _file_path(request)
    try:
        handle = await asyncio.to_thread(sandbox.fs.open_for_write, path, SANDBOX_USER)
    except FsError as problem:
        raise _fs_error(problem) from None
    with handle:
        size = await copy_body(request, handle)
    return JSONResponse({"path": path, "size": size})


async def get_file(request: Request) -> Response:
    """Streamed from the file in chunks: a large file never sits in memory."""
    sandbox = routed(request)
    try:
        host = sandbox.fs.readable_host_path(_file_path(request), SANDBOX_USER)
    except FsError as problem:
        raise _fs_error(problem) from None
    return FileResponse(host, media_type=OCTET_STREAM)


async def delete_file(request: Request) -> Response:
    sandbox = routed(request)
    path = _file_path(request)
    try:
        sandbox.fs.remove(path, SANDBOX_USER)
    except FsError as problem:
        raise _fs_error(problem) from None
    return JSONResponse({"path": path, "deleted": True})


async def health(request: Request) -> JSONResponse:
    routed(request)
    return JSONResponse({"healthy": True})


def _tagged(body: dict[str, Any], key: str) -> tuple[dict[str, Any], str]:
    value = field(body, key, dict)
    return value, field(value, "kind", str, where=f"{key}.")


def _sign_put(request: Request, target: dict[str, Any], op: dict[str, Any]) -> dict[str, Any]:
    key = check_key(field(target, "rel_path", str, where="target."))
    hint = optional(op, "multipart_hint", dict, {})
    part_size = positive(
        optional(hint, "part_size_bytes", int, DEFAULT_PART_SIZE, where="op.multipart_hint."),
        "op.multipart_hint.part_size_bytes",
    )
    max_parts = optional(hint, "max_parts", int, DEFAULT_MAX_PARTS, where="op.multipart_hint.")
    upload_id = f"upload-{secrets.token_hex(8)}"
    blobs, base = state_of(request).blobs, public_url(request)
    parts = range(1, min(max(max_parts, 1), MAX_PARTS) + 1)
    return {
        "kind": "s3_multipart",
        "uri": uri_for(key),
        "uploadId": upload_id,
        "partSizeBytes": part_size,
        "partUrls": [
            blobs.signed_url(base, key, uploadId=upload_id, partNumber=str(n)) for n in parts
        ],
    }


def _sign_get(request: Request, target: dict[str, Any]) -> dict[str, Any]:
    key = key_from_uri(field(target, "uri", str, where="target."))
    if not state_of(request).blobs.exists(key):
        raise not_found(f"no blob at {uri_for(key)}", code="BLOB_NOT_FOUND")
    return {
        "kind": "single_get",
        "url": state_of(request).blobs.signed_url(public_url(request), key),
    }


async def sign_blob(request: Request) -> JSONResponse:
    routed(request)
    body = await json_object(request)
    target, target_kind = _tagged(body, "target")
    op, op_kind = _tagged(body, "op")
    if (target_kind, op_kind) == ("artifact", "put_artifact"):
        return JSONResponse(_sign_put(request, target, op))
    if (target_kind, op_kind) == ("blob", "get_blob"):
        return JSONResponse(_sign_get(request, target))
    raise bad_request(
        f"unsupported signing request: target.kind {target_kind!r} with op.kind {op_kind!r} "
        "(supported: artifact+put_artifact, blob+get_blob)"
    )


def routes() -> list[BaseRoute]:
    return [
        Route(API + "/processes", start_process, methods=["POST"]),
        Route(API + "/processes", list_processes, methods=["GET"]),
        Route(API + "/processes/run", run_process, methods=["POST"]),
        Route(API + "/processes/{pid}", get_process, methods=["GET"]),
        Route(API + "/processes/{pid}/output/follow", follow, methods=["GET"]),
        Route(API + "/files", put_file, methods=["PUT"]),
        Route(API + "/files", get_file, methods=["GET"]),
        Route(API + "/files", delete_file, methods=["DELETE"]),
        Route(API + "/health", health, methods=["GET"]),
        Route(API + "/blob/sign", sign_blob, methods=["POST"]),
    ]
