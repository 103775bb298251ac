"""Server-sent events as the platform's proxy and load balancers deliver them.

The ideal emulator writes ``data:`` lines ended by LF and holds a stream open as long as there is
output to come. The cloud does less: a load balancer closes a stream that carried no event for a
while (``stream_idle_ms``) and any stream after a maximum age (``stream_max_ms``), the process
going on regardless; the proxy sends comment lines (``: keepalive``) on a silent stream, numbers
events with ``id:`` lines and ends lines with CRLF. All of it is legal SSE, so a client that parses
the format as specified copes; one that splits on ``\\n\\n`` does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import attrs

from kiln.emulator._config import EmulatorConfig

_MS = 1000.0
KEEPALIVE_COMMENT = ": keepalive"
_END = object()


@attrs.frozen
class StreamLimits:
    idle_s: float | None
    max_s: float | None
    keepalive_s: float | None
    crlf_and_ids: bool


UNLIMITED = StreamLimits(idle_s=None, max_s=None, keepalive_s=None, crlf_and_ids=False)


def limits_of(config: EmulatorConfig) -> StreamLimits:
    def seconds(ms: int | None) -> float | None:
        return None if ms is None else ms / _MS

    return StreamLimits(
        idle_s=seconds(config.stream_idle_ms),
        max_s=seconds(config.stream_max_ms),
        keepalive_s=seconds(config.sse_keepalive_ms),
        crlf_and_ids=config.sse_framing == "cloud",
    )


def _frame(lines: list[str], crlf: bool) -> bytes:
    end = "\r\n" if crlf else "\n"
    return (end.join(lines) + end + end).encode()


async def _pump(events: AsyncIterator[dict[str, Any]], queue: asyncio.Queue[object]) -> None:
    async for event in events:
        await queue.put(event)
    await queue.put(_END)


@attrs.define
class _Clock:
    """When the stream started, carried its last event, and last sent anything at all."""

    started: float
    last_event: float
    last_sent: float

    def expired(self, limits: StreamLimits, now: float) -> bool:
        idle = limits.idle_s is not None and now - self.last_event >= limits.idle_s
        aged = limits.max_s is not None and now - self.started >= limits.max_s
        return idle or aged

    def wait_s(self, limits: StreamLimits, now: float) -> float | None:
        """How long to wait for an event before a keepalive, an idle close or the age limit."""
        deadlines = []
        if limits.keepalive_s is not None:
            deadlines.append(self.last_sent + limits.keepalive_s)
        if limits.idle_s is not None:
            deadlines.append(self.last_event + limits.idle_s)
        if limits.max_s is not None:
            deadlines.append(self.started + limits.max_s)
        return max(0.0, min(deadlines) - now) if deadlines else None


async def sse_body(
    events: AsyncIterator[dict[str, Any]], limits: StreamLimits
) -> AsyncIterator[bytes]:
    """The wire bytes of ``events``, ended early where the limits say a real stream would be.

    The idle limit counts events, not keepalive comments: it models a proxy that gives up on a
    process with nothing to say, which is what a client must survive.
    """
    if limits == UNLIMITED:
        # The ideal profile: no clock to watch, so no queue and no extra task per stream.
        async for event in events:
            yield _frame([f"data: {json.dumps(event)}"], crlf=False)
        return
    queue: asyncio.Queue[object] = asyncio.Queue()
    pump = asyncio.create_task(_pump(events, queue))
    now = time.monotonic()
    clock = _Clock(now, now, now)
    number = 0
    try:
        while True:
            now = time.monotonic()
            if clock.expired(limits, now):
                return
            try:
                item = await asyncio.wait_for(queue.get(), timeout=clock.wait_s(limits, now))
            except TimeoutError:
                now = time.monotonic()
                due = limits.keepalive_s is not None and now - clock.last_sent >= limits.keepalive_s
                if due and not clock.expired(limits, now):
                    clock.last_sent = now
                    yield _frame([KEEPALIVE_COMMENT], limits.crlf_and_ids)
                continue
            if item is _END:
                return
            number += 1
            clock.last_event = clock.last_sent = time.monotonic()
            lines = [f"data: {json.dumps(item)}"]
            if limits.crlf_and_ids:
                lines.insert(0, f"id: {number}")
            yield _frame(lines, limits.crlf_and_ids)
    finally:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump
