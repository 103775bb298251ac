"""A mock server for kiln's API clients: answers through ``httpx.MockTransport`` from a handler
and keeps every request it saw."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from kiln.api import ApiSettings, create_http_client

Handler = Callable[[httpx.Request], httpx.Response]


def answer(status: int, body: Any) -> Handler:
    """A handler that answers every request with ``status`` and ``body`` (text or JSON)."""
    if isinstance(body, str):
        return lambda request: httpx.Response(status, text=body)
    return lambda request: httpx.Response(status, json=body)


class Recorder:
    """Answers from ``handler``; ``requests`` holds every request, in order."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    def http(self, settings: ApiSettings) -> httpx.AsyncClient:
        """kiln's HTTP client for ``settings``, talking to this server only."""
        return create_http_client(settings, transport=httpx.MockTransport(self))
