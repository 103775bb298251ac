"""The sandbox proxy client: processes, output streams, files, health and signing (§1, §3.3)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from typing import Any

import attrs
import httpx

from kiln.api._http import (
    STREAM_TIMEOUT,
    body_excerpt,
    describe,
    open_stream,
    parse_json,
    raise_for_status,
    send,
    too_large,
)
from kiln.api._models import (
    OutputEvent,
    ProcessInfo,
    RunExited,
    RunResult,
    RunStarted,
    parse_run_event,
    structure,
)
from kiln.api._settings import ENV_PROXY_URL, LOOPBACK_HOSTS, ApiSettings
from kiln.api._sse import MAX_EVENT_CHARS, LineTooLong, iter_json_events
from kiln.errors import ApiError, ResponseError, TransportError

EVENT_STREAM = "text/event-stream"
OCTET_STREAM = "application/octet-stream"
PROCESSES = "/api/v1/processes"
FILES = "/api/v1/files"
HEALTH = "/api/v1/health"
SIGN_BLOB = "/api/v1/blob/sign"
LOCAL_HOST_SUFFIX = ".local"

# Statuses with which an HTTP/1.1 server may turn down a body sent without Content-Length.
LENGTH_REQUIRED = 411
CHUNK_REFUSAL_STATUSES = frozenset({400, 413})
CHUNK_REFUSAL_MARKERS = ("chunk", "length")

MULTIPART_PART_SIZE_BYTES = 64 * 1024 * 1024
MULTIPART_MAX_PARTS = 10_000
MIB = 1024 * 1024

MISSING_PROXY_URL = "server response did not include sandbox_url; refusing to derive a proxy URL"


class ChunkedUploadRefused(ApiError):
    """The proxy will not take a streamed (chunked) upload: send it again with a known length."""


@attrs.frozen
class ProxyTarget:
    """Where proxy requests go and the headers that route them to one sandbox (§1)."""

    base_url: str
    headers: dict[str, str]


def proxy_target(
    *,
    sandbox_id: str,
    sandbox_url: str | None,
    routing_hint: str | None,
    override: str | None,
) -> ProxyTarget:
    """The server's `sandbox_url` if any, else the override, never a guess (§1, HEAD rules)."""
    url = (sandbox_url or "").strip() or (override or "").strip()
    if not url:
        raise ResponseError(
            MISSING_PROXY_URL, hint=f"set {ENV_PROXY_URL} to the sandbox proxy's URL"
        )
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ResponseError(f"sandbox proxy URL {url!r} is not a valid URL ({exc})") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ResponseError(f"sandbox proxy URL {url!r} is not an absolute http(s) URL")
    headers = {"X-Tensorlake-Sandbox-Id": sandbox_id}
    if routing_hint:
        headers["X-Tensorlake-Route-Hint"] = routing_hint
    if parsed.host in LOOPBACK_HOSTS:
        # A local proxy serves every sandbox on one port and picks the sandbox by Host.
        headers["Host"] = f"{sandbox_id}{LOCAL_HOST_SUFFIX}"
        return ProxyTarget(base_url=url.rstrip("/"), headers=headers)
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    port = f":{parsed.port}" if parsed.port is not None else ""
    return ProxyTarget(base_url=f"{parsed.scheme}://{host}{port}", headers=headers)


def process_payload(
    command: str,
    args: Sequence[str],
    *,
    user: str | None = None,
    env: Mapping[str, str] | None = None,
    working_dir: str | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """The start/run request body (§3.3). `user` is sent only when given: steps that create
    directories for the file API must run as the sandbox user, whose fsuid the file API uses."""
    payload: dict[str, Any] = {"command": command, "args": list(args)}
    if env is not None:
        payload["env"] = dict(env)
    if working_dir is not None:
        payload["working_dir"] = working_dir
    if user is not None:
        payload["user"] = user
    if timeout is not None:
        payload["timeout"] = timeout
    return payload


def multipart_max_parts(rootfs_disk_bytes: int) -> int:
    """Parts to sign for a snapshot upload: one per 64 MiB of the rootfs, within 1..10000 (§4)."""
    mib = math.ceil(rootfs_disk_bytes / MIB)
    parts = math.ceil(mib / (MULTIPART_PART_SIZE_BYTES // MIB))
    return min(max(parts, 1), MULTIPART_MAX_PARTS)


def sign_put_artifact_request(rel_path: str, *, max_parts: int) -> dict[str, Any]:
    """A sign request for uploading the snapshot to `snapshotRelPath` (§3.3, §5.4)."""
    return {
        "target": {"kind": "artifact", "rel_path": rel_path},
        "op": {
            "kind": "put_artifact",
            "multipart_hint": {
                "max_parts": max_parts,
                "part_size_bytes": MULTIPART_PART_SIZE_BYTES,
            },
        },
    }


def sign_get_blob_request(uri: str) -> dict[str, Any]:
    """A sign request for downloading a `gs://` or `s3://` blob (§3.3, §5.4)."""
    return {"target": {"kind": "blob", "uri": uri}, "op": {"kind": "get_blob"}}


class ProxyClient:
    """One sandbox's daemon, reached through the sandbox proxy."""

    def __init__(self, http: httpx.AsyncClient, target: ProxyTarget) -> None:
        self._http = http
        self._target = target

    @classmethod
    def for_sandbox(
        cls,
        settings: ApiSettings,
        http: httpx.AsyncClient,
        *,
        sandbox_id: str,
        sandbox_url: str | None,
        routing_hint: str | None,
    ) -> ProxyClient:
        target = proxy_target(
            sandbox_id=sandbox_id,
            sandbox_url=sandbox_url,
            routing_hint=routing_hint,
            override=settings.proxy_url_override,
        )
        return cls(http, target)

    def _request(
        self, method: str, path: str, *, headers: Mapping[str, str] | None = None, **kwargs: Any
    ) -> httpx.Request:
        return self._http.build_request(
            method,
            f"{self._target.base_url}{path}",
            headers={**self._target.headers, **(headers or {})},
            **kwargs,
        )

    async def _json(self, request: httpx.Request) -> Any:
        response = await send(self._http, request)
        await raise_for_status(response)
        return parse_json(response)

    # --- processes ------------------------------------------------------------------------

    async def run(
        self,
        command: str,
        args: Sequence[str],
        *,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        working_dir: str | None = None,
        timeout: float | None = None,
    ) -> RunResult:
        """Run a short command to completion in one request and collect its output.

        Meant for idempotent steps: if the stream ends before the exit event, the error is a
        transient TransportError and the caller may simply run the step again.
        """
        payload = process_payload(
            command, args, user=user, env=env, working_dir=working_dir, timeout=timeout
        )
        request = self._request(
            "POST",
            f"{PROCESSES}/run",
            json=payload,
            headers={"Accept": EVENT_STREAM},
            timeout=STREAM_TIMEOUT,
        )
        pid: int | None = None
        output: dict[str, list[str]] = {"stdout": [], "stderr": []}
        async with open_stream(self._http, request) as response:
            await _check_event_stream(response)
            async for data in _json_events(request, response):
                event = parse_run_event(data)
                if isinstance(event, RunStarted):
                    pid = event.pid
                elif isinstance(event, OutputEvent):
                    output["stderr" if event.stream == "stderr" else "stdout"].append(event.line)
                elif isinstance(event, RunExited):
                    return RunResult(
                        pid=pid,
                        exit_code=event.exit_code,
                        signal=event.signal,
                        oom_killed=event.oom_killed,
                        stdout=output["stdout"],
                        stderr=output["stderr"],
                    )
        raise TransportError(f"{describe(request)}: stream ended before the process exited")

    async def start_process(
        self,
        command: str,
        args: Sequence[str],
        *,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        working_dir: str | None = None,
    ) -> ProcessInfo:
        payload = process_payload(command, args, user=user, env=env, working_dir=working_dir)
        data = await self._json(self._request("POST", PROCESSES, json=payload))
        return structure(data, ProcessInfo, "start process response")

    async def list_processes(self) -> list[ProcessInfo]:
        data = await self._json(self._request("GET", PROCESSES))
        if not isinstance(data, dict) or not isinstance(data.get("processes"), list):
            raise ResponseError("list processes response: missing field processes")
        return [
            structure(item, ProcessInfo, f"list processes response: processes[{index}]")
            for index, item in enumerate(data["processes"])
        ]

    async def get_process(self, pid: int) -> ProcessInfo:
        data = await self._json(self._request("GET", f"{PROCESSES}/{pid}"))
        return structure(data, ProcessInfo, "get process response")

    async def follow(self, pid: int) -> AsyncIterator[OutputEvent]:
        """The process's output from its first line (every follow replays), until it exits.

        A caller that may stop early should wrap it in `contextlib.aclosing` so the stream is
        closed at once rather than when the generator is collected.
        """
        request = self._request(
            "GET",
            f"{PROCESSES}/{pid}/output/follow",
            headers={"Accept": EVENT_STREAM},
            timeout=STREAM_TIMEOUT,
        )
        async with open_stream(self._http, request) as response:
            await _check_event_stream(response)
            async for data in _json_events(request, response):
                try:
                    yield structure(data, OutputEvent, "output event")
                except ResponseError:
                    continue  # not an output line (a status ping, say): nothing to show

    # --- files ----------------------------------------------------------------------------

    async def put_file(
        self, path: str, content: bytes | AsyncIterable[bytes], *, length: int | None = None
    ) -> None:
        """Write a file. Bytes, or a stream with `length`, go with Content-Length; a stream
        without a length goes chunked, and a proxy refusing that raises ChunkedUploadRefused."""
        headers = {"Content-Type": OCTET_STREAM}
        if length is not None and not isinstance(content, bytes):
            headers["Content-Length"] = str(length)
        request = self._request(
            "PUT",
            FILES,
            params={"path": path},
            content=content,
            headers=headers,
            timeout=STREAM_TIMEOUT,
        )
        response = await send(self._http, request)
        chunked = "transfer-encoding" in request.headers
        if chunked and _refuses_chunked(response):
            raise ChunkedUploadRefused(
                f"{describe(request)}: the proxy refused a chunked upload "
                f"(HTTP {response.status_code})",
                status=response.status_code,
                body=body_excerpt(response),
                hint="send the file again with its length known (spooled to a temporary file)",
            )
        await raise_for_status(response)

    async def get_file(self, path: str) -> bytes:
        request = self._request("GET", FILES, params={"path": path})
        response = await send(self._http, request)
        await raise_for_status(response)
        return response.content

    async def delete_file(self, path: str) -> None:
        request = self._request("DELETE", FILES, params={"path": path})
        await raise_for_status(await send(self._http, request))

    # --- misc -----------------------------------------------------------------------------

    async def health(self) -> bool:
        """The daemon's own health verdict; used as a keepalive while the builder runs."""
        data = await self._json(self._request("GET", HEALTH))
        return isinstance(data, dict) and data.get("healthy") is True

    async def sign_blob(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Have the dataplane sign an upload or download; the answer is opaque JSON."""
        http_request = self._request("POST", SIGN_BLOB, json=dict(request))
        data = await self._json(http_request)
        if not isinstance(data, dict):
            raise ResponseError(f"{describe(http_request)}: expected a JSON object")
        return data


async def _check_event_stream(response: httpx.Response) -> None:
    await raise_for_status(response)
    content_type = response.headers.get("content-type", "")
    if EVENT_STREAM not in content_type:
        raise ResponseError(
            f"{describe(response.request)}: expected {EVENT_STREAM}, got {content_type!r}",
            status=response.status_code,
        )


def _refuses_chunked(response: httpx.Response) -> bool:
    if response.status_code == LENGTH_REQUIRED:
        return True
    if response.status_code not in CHUNK_REFUSAL_STATUSES:
        return False
    body = response.text.lower()
    return any(marker in body for marker in CHUNK_REFUSAL_MARKERS)


async def _json_events(request: httpx.Request, response: httpx.Response) -> AsyncIterator[Any]:
    """The stream's JSON events; a line or event past the bound is an error naming the call."""
    try:
        async for data in iter_json_events(response.aiter_bytes()):
            yield data
    except LineTooLong as exc:
        raise too_large(request, "stream line or event", MAX_EVENT_CHARS) from exc
