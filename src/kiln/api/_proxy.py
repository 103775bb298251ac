"""The sandbox proxy client: processes, output streams, files, health and signing
(docs/protocol.md#proxy-routing)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Mapping, Sequence
from typing import Any, Generic, TypeVar

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
    exit_status,
    parse_run_event,
    structure,
)
from kiln.api._settings import ENV_PROXY_URL, LOOPBACK_HOSTS, ApiSettings
from kiln.api._sse import (
    MAX_EVENT_CHARS,
    EventReader,
    LineTooLong,
    iter_json_events,
    parse_json_events,
)
from kiln.errors import ChunkedUploadRefused, ResponseError, TransportError

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

MISSING_PROXY_URL = "server response did not include sandbox_url; refusing to derive a proxy URL"

# A run stream may end before its exit event (an idle proxy closes it) or stay open and silent
# after the process exited: after this long without an event, the process's status is asked.
RUN_SILENCE_S = 10.0
# How often the status of a process whose run stream ended is read until it has exited.
RUN_STATUS_POLL_S = 0.5
# Beyond a command's own timeout (the daemon kills it then), how long the client waits for the
# daemon to report the end before it gives up on the step.
RUN_TIMEOUT_GRACE_S = 15.0

_T = TypeVar("_T")


@attrs.frozen
class ProxyTarget:
    """Where proxy requests go and the headers that route them to one sandbox
    (docs/protocol.md#proxy-routing)."""

    base_url: str
    headers: dict[str, str]


def proxy_target(
    *,
    sandbox_id: str,
    sandbox_url: str | None,
    routing_hint: str | None,
    override: str | None,
) -> ProxyTarget:
    """The server's `sandbox_url` if any, else the override, never a guess
    (docs/protocol.md#proxy-routing)."""
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
    """The start/run request body (docs/protocol.md#process-payload). `user` is sent only when
    given: steps that create directories for the file API must run as the sandbox user, whose fsuid
    the file API uses."""
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
        silence_s: float = RUN_SILENCE_S,
    ) -> RunResult:
        """Run a short command to completion in one request and collect its output.

        When the stream ends without an exit event, or stays silent for ``silence_s``, the
        process's status says how it ended (polled until it has). ``timeout`` (seconds) goes to
        the daemon, which kills the command then; the client waits a little longer for the end
        and then raises a transient TransportError. A stream that ends before the process
        started raises one too: the step is idempotent, the caller may run it again.
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
        output = _RunOutput()
        limit = None if timeout is None else timeout + RUN_TIMEOUT_GRACE_S
        try:
            async with asyncio.timeout(limit):
                result = await self._run_stream(request, output, silence_s)
                if result is not None:
                    return result
                if output.pid is None:
                    raise TransportError(
                        f"{describe(request)}: stream ended before the process started"
                    )
                return await self._run_ended(output, output.pid)
        except TimeoutError:
            raise TransportError(
                f"{describe(request)}: {command} did not finish within {timeout:g} s"
            ) from None

    async def _run_stream(
        self, request: httpx.Request, output: _RunOutput, silence_s: float
    ) -> RunResult | None:
        """The result from the stream's exit event, or from the status after a silence; None
        when the stream ended without either."""
        async with open_stream(self._http, request) as response:
            await _check_event_stream(response)
            async with (
                contextlib.aclosing(_json_events(request, response)) as events,
                contextlib.aclosing(with_silences(events, silence_s)) as items,
            ):
                async for data in items:
                    if data is None:
                        result = await self._run_status(output)
                        if result is not None:
                            return result
                        continue
                    event = parse_run_event(data)
                    if isinstance(event, RunStarted):
                        output.pid = event.pid
                    elif isinstance(event, OutputEvent):
                        output.add(event)
                    elif isinstance(event, RunExited):
                        return output.result(event.exit_code, event.signal, event.oom_killed)
        return None

    async def _run_status(self, output: _RunOutput) -> RunResult | None:
        """The result from the process's status, None while it runs (or before it started)."""
        if output.pid is None:
            return None
        status = exit_status(await self.get_process(output.pid))
        if status is None:
            return None
        return output.result(status.code, None, status.oom)

    async def _run_ended(self, output: _RunOutput, pid: int) -> RunResult:
        while (result := await self._run_status(output)) is None:
            await asyncio.sleep(RUN_STATUS_POLL_S)
        return result

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

    async def follow(self, pid: int) -> AsyncGenerator[OutputEvent, None]:
        """The process's output from its first line (every follow replays), until it exits.

        A caller that may stop early should wrap it in `contextlib.aclosing` so the stream is
        closed at once rather than when the generator is collected.
        """
        async with contextlib.aclosing(self.follow_batches(pid)) as batches:
            async for batch in batches:
                for event in batch or ():
                    yield event

    async def follow_batches(
        self, pid: int, *, silence_s: float | None = None
    ) -> AsyncGenerator[list[OutputEvent] | None, None]:
        """What `follow` gives, in order, in lists (never empty): a task reads the stream ahead
        and all it read since the caller last asked is parsed in one pass (a fast log costs one
        trip through the parser per wake-up, not per line). With ``silence_s``, a None comes
        after every ``silence_s`` seconds without a line (keepalive comments are no line), and
        the stream goes on being read. Close it as `follow`."""
        request = self._request(
            "GET",
            f"{PROCESSES}/{pid}/output/follow",
            headers={"Accept": EVENT_STREAM},
            timeout=STREAM_TIMEOUT,
        )
        async with open_stream(self._http, request) as response:
            await _check_event_stream(response)
            reader = EventReader()
            clock = asyncio.get_running_loop().time
            ahead = _ReadAhead(_pieces(response.aiter_bytes()))
            try:
                last = clock()
                while not ahead.done:
                    wait = None if silence_s is None else max(0.0, last + silence_s - clock())
                    chunks = await ahead.take(wait)
                    if chunks is not None:
                        events = _output_events(_feed(reader, chunks))
                        if events:
                            last = clock()
                            yield events
                            continue
                    if silence_s is not None and clock() - last >= silence_s:
                        last = clock()
                        yield None
                events = _output_events(reader.close())
            except LineTooLong as exc:
                raise too_large(request, "stream line or event", MAX_EVENT_CHARS) from exc
            finally:
                await ahead.aclose()
            if events:
                yield events

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


class _RunOutput:
    """What a run stream delivered so far: the pid and the output lines."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.stdout: list[str] = []
        self.stderr: list[str] = []

    def add(self, event: OutputEvent) -> None:
        (self.stderr if event.stream == "stderr" else self.stdout).append(event.line)

    def result(self, exit_code: int | None, signal: int | None, oom_killed: bool) -> RunResult:
        return RunResult(
            pid=self.pid,
            exit_code=exit_code,
            signal=signal,
            oom_killed=oom_killed,
            stdout=self.stdout,
            stderr=self.stderr,
        )


async def with_silences(
    events: AsyncIterator[_T], silence_s: float
) -> AsyncGenerator[_T | None, None]:
    """``events``, with a None after every ``silence_s`` seconds in which none came.

    The stream is never read with a timeout that would cancel a read half done: one reader task
    reads it ahead (see `read_ahead`), so a caller can ask elsewhere (a process's status) after a
    silence and go on waiting. Closing this generator cancels the reader; ``events`` is the
    caller's to close.
    """
    async with contextlib.aclosing(read_ahead(events, silence_s)) as batches:
        async for batch in batches:
            if batch is None:
                yield None
                continue
            for item in batch:
                yield item


async def read_ahead(
    items: AsyncIterator[_T], silence_s: float | None
) -> AsyncGenerator[list[_T] | None, None]:
    """``items``, in lists of all those read since the caller last asked (never empty), with a
    None after every ``silence_s`` seconds in which none came (never, for None). See
    `_ReadAhead`; closing this generator cancels its reader."""
    ahead = _ReadAhead(items)
    try:
        while not ahead.done:
            batch = await ahead.take(silence_s)
            if batch is None or batch:
                yield batch
    finally:
        await ahead.aclose()


class _ReadAhead(Generic[_T]):
    """One reader task reading ``items`` ahead, at most READ_AHEAD_ITEMS of them, for as long
    as this lives; what it has read is handed over at once, in order, without a turn of the
    event loop per item (a fast log costs one wake-up per list, not a task and a wait per line,
    which bench_logs' profile showed). An error of ``items`` is raised after the items read
    before it. ``items`` is the caller's to close.

    A deque and two futures rather than an asyncio.Queue: the queue's bookkeeping per item cost
    more than the rest of a line's trip through the read-ahead (bench_logs' profile)."""

    def __init__(self, items: AsyncIterator[_T]) -> None:
        self._items: collections.deque[_T] = collections.deque()
        self._finished = False
        self._error: Exception | None = None
        # Set when the caller waits for items, or the reader for room.
        self._arrived: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None
        self._reader = asyncio.ensure_future(self._read(items))
        # Whether ``items`` ended and everything read was taken.
        self.done = False

    async def take(self, timeout: float | None) -> list[_T] | None:
        """Everything read and not yet taken, waiting for something for at most ``timeout``
        seconds (None when nothing came by then). At most READ_AHEAD_ITEMS + 1 items; the last
        list may be empty."""
        if not self._items and not self._finished:
            self._arrived = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._arrived
            except TimeoutError:
                return None
            finally:
                self._arrived = None
        batch = list(self._items)
        self._items.clear()
        _wake(self._room)
        if self._finished and (not batch or self._error is None):
            if self._error is not None:
                raise self._error
            self.done = True
        return batch

    async def _read(self, items: AsyncIterator[_T]) -> None:
        try:
            async for item in items:
                self._items.append(item)
                _wake(self._arrived)
                if len(self._items) >= READ_AHEAD_ITEMS:
                    self._room = asyncio.get_running_loop().create_future()
                    try:
                        await self._room
                    finally:
                        self._room = None
        except Exception as error:
            self._error = error
        self._finished = True
        _wake(self._arrived)

    async def aclose(self) -> None:
        """Cancel the reader and wait for its end."""
        reader = self._reader
        reader.cancel()
        # Waited for without raising: the read's own error (if it failed meanwhile) is moot
        # once the caller stopped reading, and a cancel of this task must go on up.
        await asyncio.wait({reader})
        if not reader.cancelled():
            reader.exception()


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


# How far the reader may run ahead of the caller: bounds the memory a fast stream can take while
# the caller is busy (a line of log each, or a piece of a follow stream each).
READ_AHEAD_ITEMS = 256
# A follow stream is read ahead in pieces of at most this many bytes (so at most READ_AHEAD_ITEMS
# of them are held), and parsed in runs of about FOLLOW_PARSE_BYTES: many small chunks (a line
# each, as HTTP/1.1 chunked streams bring a fast log) are parsed in one pass.
FOLLOW_PIECE_BYTES = 16 << 10
FOLLOW_PARSE_BYTES = 64 << 10


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


async def _json_events(
    request: httpx.Request, response: httpx.Response
) -> AsyncGenerator[Any, None]:
    """The stream's JSON events; a line or event past the bound is an error naming the call."""
    try:
        async for data in iter_json_events(response.aiter_bytes()):
            yield data
    except LineTooLong as exc:
        raise too_large(request, "stream line or event", MAX_EVENT_CHARS) from exc


async def _pieces(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``chunks`` cut to at most FOLLOW_PIECE_BYTES each."""
    async for chunk in chunks:
        if len(chunk) <= FOLLOW_PIECE_BYTES:
            yield chunk
            continue
        for start in range(0, len(chunk), FOLLOW_PIECE_BYTES):
            yield chunk[start : start + FOLLOW_PIECE_BYTES]


def _feed(reader: EventReader, pieces: list[bytes]) -> list[str]:
    """The data of the events ``pieces`` complete, fed in runs of about FOLLOW_PARSE_BYTES."""
    texts: list[str] = []
    run: list[bytes] = []
    size = 0
    for piece in pieces:
        run.append(piece)
        size += len(piece)
        if size >= FOLLOW_PARSE_BYTES:
            texts.extend(reader.feed(b"".join(run)))
            run, size = [], 0
    if run:
        texts.extend(reader.feed(run[0] if len(run) == 1 else b"".join(run)))
    return texts


def _output_events(texts: list[str]) -> list[OutputEvent]:
    """The output lines among events' data; others (a status ping, noise) are skipped."""
    events = []
    for data in parse_json_events(texts):
        # output_event's usual case, inline: this runs once per line of a fast log.
        if type(data) is dict:
            line = data.get("line")
            stream = data.get("stream", "stdout")
            if type(line) is str and type(stream) is str and "timestamp" in data:
                events.append(OutputEvent(line=line, timestamp=data["timestamp"], stream=stream))
                continue
        event = output_event(data)
        if event is not None:
            events.append(event)
    return events


def output_event(data: Any) -> OutputEvent | None:
    """``data`` as an output line; None when it is not one. The usual shape (a string line and
    stream, a timestamp) is built directly: a fast log is one of these per line, and the general
    converter cost a third of a line's parsing (bench_logs' profile). Anything else goes through
    it, so both ways agree (tests/api/test_api_proxy.py)."""
    if type(data) is dict:
        line = data.get("line")
        stream = data.get("stream", "stdout")
        if type(line) is str and type(stream) is str and "timestamp" in data:
            return OutputEvent(line=line, timestamp=data["timestamp"], stream=stream)
    try:
        return structure(data, OutputEvent, "output event")
    except ResponseError:
        return None
