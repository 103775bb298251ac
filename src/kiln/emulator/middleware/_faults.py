"""Injected faults: the rules a test posts to ``/_emulator/faults`` and what their actions do.

A rule matches requests by method and path regex; its action replaces the response (a status),
delays it, drops the connection, or cuts an SSE body after N events. ``after`` lets the first K
matching requests through, ``times`` limits how often the action fires.
"""

from __future__ import annotations

import builtins
import contextlib
import itertools
import re
import threading
from collections.abc import Mapping
from typing import Any

import attrs
from starlette.types import Message, Send

from kiln.errors import UsageError

EMULATOR_PREFIX = "/_emulator/"

SSE_CONTENT_TYPE = b"text/event-stream"
# Not a valid header name (no spaces allowed): see `reset_connection` for why it is sent at all.
RESET_HEADER = (b"kiln emulator reset", b"")

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


def is_sse(start: Message) -> bool:
    """Whether a response start announces an SSE body (the only kind ``CutStream`` cuts)."""
    for key, value in start.get("headers", []):
        if key.lower() == b"content-type" and SSE_CONTENT_TYPE in value.lower():
            return True
    return False


async def reset_connection(send: Send) -> None:
    """Drop the connection before any response reaches the client."""
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


async def send_text(send: Send, status: int, text: str) -> None:
    """Answer with ``text`` as the body of a ``Respond`` fault."""
    body = text.encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
