"""The emulator's network: injected faults, a request log and a latency/bandwidth model.

Everything here is pure ASGI so it wraps any app (the emulator's Starlette app in production, a
toy app in tests) and sees exactly what a client sees on the wire. It serves two endpoints itself:

- ``/_emulator/faults``: ``POST`` adds a rule, ``GET`` lists the rules, ``DELETE`` clears them.
- ``/_emulator/requests``: ``GET`` returns the request log.

Other ``/_emulator/`` paths go straight to the app: introspection is never faulted, delayed,
paced or logged, so a test can always look at the emulator while it misbehaves on purpose.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import itertools
import json
import re
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

import attrs
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiln.errors import UsageError

EMULATOR_PREFIX = "/_emulator/"
FAULTS_PATH = "/_emulator/faults"
REQUESTS_PATH = "/_emulator/requests"

# Megabits, as network links are rated; 1 Mbit/s moves 125 000 bytes per second.
BYTES_PER_SECOND_PER_MBPS = 125_000
# A link buffers a little before it starts pacing; without a burst a 200-byte JSON reply would be
# charged a full token wait of its own and tiny requests would dominate the model.
BURST_BYTES = 16 * 1024

SSE_CONTENT_TYPE = b"text/event-stream"
# Not a valid header name (no spaces allowed): see `_reset` for why it is sent at all.
RESET_HEADER = (b"kiln emulator reset", b"")

# Query parameters whose values may carry credentials (pre-signed URLs, tokens). The files API's
# `path=` is not one of them and stays readable in the log.
SECRET_QUERY_NAME = re.compile(r"token|secret|sig|key|pass|auth|cred", re.IGNORECASE)
REDACTED = "<redacted>"
SANDBOX_HOST_SUFFIX = ".local"

RULE_KEYS = frozenset({"match", "action", "times", "after"})
MATCH_KEYS = frozenset({"method", "path"})
ACTION_KINDS = ("status", "delay_ms", "reset", "cut_stream_after")
# A fault replaces the final response; 1xx statuses are interim and cannot end an exchange.
MIN_STATUS = 200
MAX_STATUS = 599

RULE_HINT = (
    'send {"match": {"method": "GET", "path": "<regex>"}, "action": {"status": 502} | '
    '{"delay_ms": N} | {"reset": true} | {"cut_stream_after": N}, "times": N, "after": K}'
)


@attrs.frozen
class Respond:
    """Answer with this status and body instead of calling the app."""

    status: int
    body: str


@attrs.frozen
class Delay:
    """Wait, then call the app as usual."""

    ms: int


@attrs.frozen
class Reset:
    """Drop the connection without a complete response."""


@attrs.frozen
class CutStream:
    """Pass an SSE response through, but end its body after this many events."""

    events: int


Action = Respond | Delay | Reset | CutStream


@attrs.frozen
class FaultRule:
    """A validated rule; ``spec`` is its normalised JSON form, as listed back to clients."""

    id: str
    method: str | None
    path: re.Pattern[str] | None
    action: Action
    times: int | None
    after: int
    spec: Mapping[str, Any]

    def matches(self, method: str, path: str) -> bool:
        method_ok = self.method is None or self.method == method.upper()
        return method_ok and (self.path is None or self.path.search(path) is not None)


def _invalid(message: str) -> UsageError:
    return UsageError(f"invalid fault rule: {message}", hint=RULE_HINT)


def _require_object(value: Any, where: str, allowed: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _invalid(f"{where} must be a JSON object, got {type(value).__name__}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise _invalid(f"{where} has unknown keys {unknown}; allowed: {sorted(allowed)}")
    return value


def _require_int(value: Any, where: str, minimum: int) -> int:
    # bool is an int in Python; `true` for a count is a mistake worth reporting.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _invalid(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def _parse_match(value: Any) -> tuple[str | None, re.Pattern[str] | None]:
    match = _require_object(value, "match", MATCH_KEYS)
    method = match.get("method")
    if method is not None and not isinstance(method, str):
        raise _invalid(f"match.method must be a string, got {method!r}")
    pattern = match.get("path")
    if pattern is None:
        return (method.upper() if method else None), None
    if not isinstance(pattern, str):
        raise _invalid(f"match.path must be a regex string, got {pattern!r}")
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise _invalid(f"match.path {pattern!r} is not a valid regex: {exc}") from None
    return (method.upper() if method else None), compiled


def _parse_action(value: Any) -> Action:
    action = _require_object(value, "action", frozenset({*ACTION_KINDS, "body"}))
    kinds = [kind for kind in ACTION_KINDS if kind in action]
    if len(kinds) != 1:
        raise _invalid(f"action must have exactly one of {list(ACTION_KINDS)}, got {kinds}")
    kind = kinds[0]
    if "body" in action and kind != "status":
        raise _invalid("action.body only goes with action.status")
    if kind == "status":
        status = _require_int(action["status"], "action.status", MIN_STATUS)
        if status > MAX_STATUS:
            raise _invalid(f"action.status must be <= {MAX_STATUS}, got {status}")
        body = action.get("body", "")
        if not isinstance(body, str):
            raise _invalid(f"action.body must be a string, got {body!r}")
        return Respond(status, body)
    if kind == "delay_ms":
        return Delay(_require_int(action["delay_ms"], "action.delay_ms", 0))
    if kind == "reset":
        if action["reset"] is not True:
            raise _invalid(f"action.reset must be true, got {action['reset']!r}")
        return Reset()
    return CutStream(_require_int(action["cut_stream_after"], "action.cut_stream_after", 0))


def parse_rule(rule_id: str, raw: Any) -> FaultRule:
    """Validate a rule as sent to ``POST /_emulator/faults``; raise UsageError naming the problem."""
    rule = _require_object(raw, "rule", RULE_KEYS)
    if "action" not in rule:
        raise _invalid("action is required")
    method, path = _parse_match(rule.get("match", {}))
    action = _parse_action(rule["action"])
    times = rule.get("times")
    times = None if times is None else _require_int(times, "times", 1)
    after = _require_int(rule.get("after", 0), "after", 0)
    spec = {
        "id": rule_id,
        "match": {"method": method, "path": path.pattern if path else None},
        "action": dict(rule["action"]),
        "times": times,
        "after": after,
    }
    return FaultRule(rule_id, method, path, action, times, after, spec)


class FaultRules:
    """A thread-safe, ordered set of fault rules; the first applicable rule wins."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: builtins.list[FaultRule] = []
        # Per rule id: [matching requests seen, times the action fired].
        self._counts: dict[str, builtins.list[int]] = {}
        self._ids = itertools.count(1)

    def add(self, rule: Any) -> dict[str, Any]:
        """Validate and store ``rule``; return it normalised, with its ``id``."""
        with self._lock:
            parsed = parse_rule(f"fault-{next(self._ids)}", rule)
            self._rules.append(parsed)
            self._counts[parsed.id] = [0, 0]
            return self._describe(parsed)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self._counts.clear()

    def take(self, method: str, path: str) -> Action | None:
        """The action for this request, counting it against the rules' ``after`` and ``times``."""
        if path.startswith(EMULATOR_PREFIX):
            return None
        with self._lock:
            for rule in self._rules:
                if not rule.matches(method, path):
                    continue
                counts = self._counts[rule.id]
                counts[0] += 1
                if counts[0] <= rule.after:
                    continue
                if rule.times is not None and counts[1] >= rule.times:
                    continue
                counts[1] += 1
                return rule.action
        return None

    def _describe(self, rule: FaultRule) -> dict[str, Any]:
        seen, fired = self._counts[rule.id]
        return {**rule.spec, "seen": seen, "fired": fired}

    def list(self) -> builtins.list[dict[str, Any]]:
        """Every rule in match order, with how often it matched (``seen``) and acted (``fired``)."""
        with self._lock:
            return [self._describe(rule) for rule in self._rules]


class RequestLog:
    """A thread-safe, append-only record of the requests the emulator answered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[dict[str, Any]] = []

    def append(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._entries.append(entry)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(entry) for entry in self._entries]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def sandbox_of(scope: Scope) -> str | None:
    """The sandbox a proxy request is routed to, as the client addressed it."""
    host = (_header(scope, b"host") or "").rsplit(":", 1)[0]
    if host.endswith(SANDBOX_HOST_SUFFIX) and len(host) > len(SANDBOX_HOST_SUFFIX):
        return host.removesuffix(SANDBOX_HOST_SUFFIX)
    return _header(scope, b"x-tensorlake-sandbox-id")


def safe_query(raw: bytes) -> dict[str, str]:
    """The decoded query, with credential-looking values replaced."""
    pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
    return {k: REDACTED if SECRET_QUERY_NAME.search(k) else v for k, v in pairs}


class TokenBucket:
    """Paces bytes to a rate, allowing a small burst; debt is paid by sleeping."""

    def __init__(self, bytes_per_second: float) -> None:
        self._rate = bytes_per_second
        self._tokens = float(BURST_BYTES)
        self._stamp = time.monotonic()

    async def consume(self, size: int) -> None:
        now = time.monotonic()
        self._tokens = min(BURST_BYTES, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        self._tokens -= size
        if self._tokens < 0:
            await asyncio.sleep(-self._tokens / self._rate)


class SseCutter:
    """Counts events (blocks ended by an empty line) and says where the body must end.

    Comment blocks (``: keepalive``) are not events: a cut placed after N events must fall at
    the same place whether or not the stream carried keepalives. CR bytes are skipped, so CRLF
    framing counts as LF framing does.
    """

    def __init__(self, events: int) -> None:
        self.remaining = events
        self._after_newline = True
        self._block_is_comment: bool | None = None

    def feed(self, chunk: bytes) -> int | None:
        """The offset in ``chunk`` just past the last allowed event, or None to pass it all."""
        if self.remaining == 0:
            return 0
        for index, byte in enumerate(chunk):
            if byte == ord("\r"):
                continue
            is_newline = byte == ord("\n")
            if self._block_is_comment is None and not is_newline:
                self._block_is_comment = byte == ord(":")
            if is_newline and self._after_newline and self._block_is_comment is not None:
                counted = not self._block_is_comment
                self._block_is_comment = None
                self._after_newline = False
                if counted:
                    self.remaining -= 1
                    if self.remaining == 0:
                        return index + 1
                continue
            self._after_newline = is_newline
        return None


async def _send_json(send: Send, status: int, payload: Any) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


class _Exchange:
    """One request's passage through the network: wraps ``receive``/``send`` and logs the result."""

    def __init__(self, scope: Scope, log: RequestLog, bandwidth_mbps: float | None) -> None:
        self._scope = scope
        self._log = log
        # HTTP/1.1 carries one exchange at a time on a connection, so buckets per exchange pace
        # the connection while it is busy; each direction has its own, as links are full duplex.
        rate = None if bandwidth_mbps is None else bandwidth_mbps * BYTES_PER_SECOND_PER_MBPS
        self._upload = None if rate is None else TokenBucket(rate)
        self._download = None if rate is None else TokenBucket(rate)
        self._started = time.time()
        self._clock = time.monotonic()
        self._status: int | None = None
        self._logged = False
        self._cutter: SseCutter | None = None
        self._cut_done = False

    def cut_after(self, events: int) -> None:
        self._cutter = SseCutter(events)

    def wrap_receive(self, receive: Receive) -> Receive:
        async def paced_receive() -> Message:
            # After a cut the client is gone as far as the app can tell, exactly as when a real
            # client hangs up: the app's streaming loop stops, the emulated process does not.
            if self._cut_done:
                return {"type": "http.disconnect"}
            message = await receive()
            if self._upload is not None and message["type"] == "http.request":
                await self._upload.consume(len(message.get("body", b"")))
            return message

        return paced_receive

    def wrap_send(self, send: Send) -> Send:
        async def outgoing(message: Message) -> None:
            if self._cut_done:
                return
            if message["type"] == "http.response.start":
                self._status = message["status"]
                if self._cutter is not None and not _is_sse(message):
                    self._cutter = None
            elif message["type"] == "http.response.body" and self._cutter is not None:
                message = self._cut(message)
            if message["type"] == "http.response.body" and self._download is not None:
                await self._download.consume(len(message.get("body", b"")))
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                # Logged before the last byte leaves: a client that has read the whole response
                # (and then asks for the log) always finds this exchange in it.
                self.finish(complete=True)
            await send(message)

        return outgoing

    def _cut(self, message: Message) -> Message:
        assert self._cutter is not None
        body = message.get("body", b"")
        end = self._cutter.feed(body)
        if end is None:
            return message
        self._cut_done = True
        return {"type": "http.response.body", "body": body[:end], "more_body": False}

    def finish(self, *, complete: bool) -> None:
        """Log the exchange once; ``status`` is null when the client got no complete response."""
        if self._logged:
            return
        self._logged = True
        self._log.append(
            {
                "method": self._scope["method"],
                "path": self._scope["path"],
                "query": safe_query(self._scope.get("query_string", b"")),
                "status": self._status if complete else None,
                "sandbox": sandbox_of(self._scope),
                "time": self._started,
                "duration_ms": (time.monotonic() - self._clock) * 1000,
            }
        )


def _is_sse(start: Message) -> bool:
    for key, value in start.get("headers", []):
        if key.lower() == b"content-type" and SSE_CONTENT_TYPE in value.lower():
            return True
    return False


async def _reset(send: Send) -> None:
    # ASGI has no "drop the connection" message, and an app that raises before responding gets a
    # 500, so the drop is provoked: a response start whose header name is illegal. uvicorn marks
    # the response started, then its HTTP parser refuses to serialise the head, so nothing reaches
    # the wire; when the app returns with the response incomplete, uvicorn closes the connection.
    # The client sees a connection closed without a response (a transport error, as with a real
    # reset), never a status it could act on: headers first would let a client that ignores
    # bodies, like the official one on PUT, take the drop for a success.
    start = {"type": "http.response.start", "status": 200, "headers": [RESET_HEADER]}
    with contextlib.suppress(Exception):
        await send(start)


class _Network:
    def __init__(
        self,
        app: ASGIApp,
        faults: FaultRules,
        log: RequestLog,
        latency_ms: int,
        bandwidth_mbps: float | None,
    ) -> None:
        self._app = app
        self._faults = faults
        self._log = log
        self._latency_s = latency_ms / 1000
        self._bandwidth_mbps = bandwidth_mbps

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
        elif scope["path"] == FAULTS_PATH:
            await self._serve_faults(scope, receive, send)
        elif scope["path"] == REQUESTS_PATH and scope["method"] == "GET":
            await _send_json(send, 200, self._log.entries())
        elif scope["path"].startswith(EMULATOR_PREFIX):
            await self._app(scope, receive, send)
        else:
            await self._serve_app(scope, receive, send)

    async def _serve_faults(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        if method == "GET":
            await _send_json(send, 200, self._faults.list())
        elif method == "DELETE":
            self._faults.clear()
            await _send_json(send, 200, [])
        elif method == "POST":
            await self._add_fault(receive, send)
        else:
            await _send_json(send, 405, {"error": f"{method} not allowed on {FAULTS_PATH}"})

    async def _add_fault(self, receive: Receive, send: Send) -> None:
        try:
            raw = json.loads(await _read_body(receive))
        except ValueError as exc:
            await _send_json(send, 400, {"error": f"body is not JSON: {exc}", "hint": RULE_HINT})
            return
        try:
            added = self._faults.add(raw)
        except UsageError as exc:
            await _send_json(send, 400, {"error": exc.message, "hint": exc.hint})
            return
        await _send_json(send, 201, added)

    async def _serve_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = _Exchange(scope, self._log, self._bandwidth_mbps)
        action = self._faults.take(scope["method"], scope["path"])
        try:
            if self._latency_s:
                await asyncio.sleep(self._latency_s)
            out = exchange.wrap_send(send)
            if isinstance(action, Respond):
                await _send_text(out, action.status, action.body)
                return
            if isinstance(action, Reset):
                await _reset(send)
                return
            if isinstance(action, Delay):
                await asyncio.sleep(action.ms / 1000)
            if isinstance(action, CutStream):
                exchange.cut_after(action.events)
            await self._app(scope, exchange.wrap_receive(receive), out)
        finally:
            exchange.finish(complete=False)


async def _send_text(send: Send, status: int, text: str) -> None:
    body = text.encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def wrap_app(
    app: ASGIApp,
    *,
    faults: FaultRules,
    log: RequestLog,
    latency_ms: int = 0,
    bandwidth_mbps: float | None = None,
) -> ASGIApp:
    """Put ``app`` behind the emulated network.

    ``latency_ms`` delays every response; ``bandwidth_mbps`` (megabits per second) paces request
    bodies as they arrive and response bodies as they leave, so an upload of S bytes takes about
    S / bandwidth. Both skip ``/_emulator/`` paths.
    """
    if latency_ms < 0:
        raise UsageError(f"latency_ms must be >= 0, got {latency_ms}", hint="use 0 for none")
    if bandwidth_mbps is not None and bandwidth_mbps <= 0:
        raise UsageError(
            f"bandwidth_mbps must be > 0, got {bandwidth_mbps}", hint="omit it for an unpaced link"
        )
    return _Network(app, faults, log, latency_ms, bandwidth_mbps)
