"""The emulated network as one ASGI middleware: faults, pacing and the request log wired together.

Everything here is pure ASGI so it wraps any app (the emulator's Starlette app in production, a
toy app in tests) and sees exactly what a client sees on the wire. It serves two endpoints itself:

- ``/_emulator/faults``: ``POST`` adds a rule, ``GET`` lists the rules, ``DELETE`` clears them.
- ``/_emulator/requests``: ``GET`` returns the request log.

Other ``/_emulator/`` paths go straight to the app: introspection is never faulted, delayed,
paced or logged, so a test can always look at the emulator while it misbehaves on purpose.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiln.emulator.middleware._faults import (
    EMULATOR_PREFIX,
    RULE_HINT,
    CutStream,
    Delay,
    FaultRules,
    Reset,
    Respond,
    SseCutter,
    is_sse,
    reset_connection,
    send_text,
)
from kiln.emulator.middleware._pacing import bucket
from kiln.emulator.middleware._request_log import RequestLog, log_entry
from kiln.errors import UsageError

FAULTS_PATH = "/_emulator/faults"
REQUESTS_PATH = "/_emulator/requests"


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
        self._upload = bucket(bandwidth_mbps)
        self._download = bucket(bandwidth_mbps)
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
                if self._cutter is not None and not is_sse(message):
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
        entry = log_entry(
            self._scope,
            status=self._status if complete else None,
            started=self._started,
            duration_s=time.monotonic() - self._clock,
        )
        self._log.append(entry)


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
                await send_text(out, action.status, action.body)
                return
            if isinstance(action, Reset):
                await reset_connection(send)
                return
            if isinstance(action, Delay):
                await asyncio.sleep(action.ms / 1000)
            if isinstance(action, CutStream):
                exchange.cut_after(action.events)
            await self._app(scope, exchange.wrap_receive(receive), out)
        finally:
            exchange.finish(complete=False)


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
