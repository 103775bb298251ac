"""The request log: what the emulator answered, as ``GET /_emulator/requests`` lists it.

An entry never carries a credential: query values whose names look like one are redacted.
"""

from __future__ import annotations

import re
import threading
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import Scope

# Query parameters whose values may carry credentials (pre-signed URLs, tokens). The files API's
# `path=` is not one of them and stays readable in the log.
SECRET_QUERY_NAME = re.compile(r"token|secret|sig|key|pass|auth|cred", re.IGNORECASE)
REDACTED = "<redacted>"
SANDBOX_HOST_SUFFIX = ".local"


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


def log_entry(
    scope: Scope, *, status: int | None, started: float, duration_s: float
) -> dict[str, Any]:
    """The log's record of one exchange; ``status`` is None when no complete response went out."""
    return {
        "method": scope["method"],
        "path": scope["path"],
        "query": safe_query(scope.get("query_string", b"")),
        "status": status,
        "sandbox": sandbox_of(scope),
        "time": started,
        "duration_ms": duration_s * 1000,
    }
