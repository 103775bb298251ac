"""The shared HTTP client, status mapping (docs/protocol.md#status-mapping) and transient
classification (docs/protocol.md#transient-errors)."""

from __future__ import annotations

import asyncio
import functools
import secrets
import ssl
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from kiln.api._settings import (
    ENV_API_KEY,
    ENV_ORGANIZATION_ID,
    ENV_PAT,
    ENV_PROJECT_ID,
    ApiSettings,
)
from kiln.api._transport import SharedTransport, streamed
from kiln.errors import (
    ApiError,
    AuthenticationError,
    AuthorizationError,
    ResponseError,
    ServerError,
    TransportError,
)

# A platform that does not accept a connection within this long is not going to; failing fast
# lets the caller's retry loop try again instead of hanging a phase.
CONNECT_TIMEOUT_S = 10.0
# Ordinary calls (prepare, create, file reads) answer in seconds, but prepare and create can sit
# behind slow control-plane work; five minutes is generous for them and still bounds a dead peer.
READ_TIMEOUT_S = 300.0
DEFAULT_TIMEOUT = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
# Output streams and uploads legitimately stay quiet for as long as a build step runs (minutes to
# hours), so only the connect phase is bounded; the phase deadlines of the machine bound the rest.
STREAM_TIMEOUT = httpx.Timeout(None, connect=CONNECT_TIMEOUT_S)

# The largest response body kiln reads. The platform's JSON answers are kilobytes and the
# builder's metadata file a few more; a server sending more is broken or hostile, and reading it
# all (1 GB took kiln to 3.75 GB RSS) would let it take the machine down with the build.
MAX_RESPONSE_BYTES = 4 << 20
BODY_EXCERPT_CHARS = 2000
REDACTED = "[redacted]"
BEARER_PREFIX = "Bearer "

TRANSIENT_STATUSES = frozenset({502, 503, 504})
NOT_RUNNING_STATUS = 400
NOT_RUNNING_MARKER = "not running"
PROXY_FAILURE_MARKERS = ("PROXY_ERROR", "Failed to proxy request")

_AUTH_HINT = f"check {ENV_API_KEY} (or {ENV_PAT}); the token was refused"
_FORBIDDEN_HINT = (
    f"the token may not do this; check {ENV_ORGANIZATION_ID} and {ENV_PROJECT_ID} for a PAT"
)
_TRANSIENT_HINT = "the platform reported a temporary condition; retrying may succeed"
_TRANSPORT_HINT = "check the network and the API URL; retrying may succeed"


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """The CA bundle, loaded once per process: loading it costs ~25 ms, as much as a build's
    protocol work on a fast network, and httpx would load it again for every client."""
    return httpx.create_ssl_context()


def create_http_client(
    settings: ApiSettings, *, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """The one client a build shares between its platform, lifecycle and proxy clients.

    HTTP/1.1 only: the sandbox proxy and the local emulator speak nothing else, and chunked
    uploads are an HTTP/1.1 notion. Redirects are not followed so the token never travels to a
    host it was not meant for.
    """
    headers = {
        "Authorization": f"{BEARER_PREFIX}{settings.credentials.token}",
        "User-Agent": settings.user_agent,
        **settings.credentials.scope_headers,
    }
    return httpx.AsyncClient(
        headers=headers,
        timeout=DEFAULT_TIMEOUT,
        transport=transport or SharedTransport(_ssl_context()),
        verify=_ssl_context(),
        follow_redirects=False,
        event_hooks={"request": [_add_traceparent]},
    )


async def _add_traceparent(request: httpx.Request) -> None:
    # W3C trace context, fresh per request as the reference does, so the platform's logs can
    # tie one request to one trace without kiln running a tracer.
    request.headers["traceparent"] = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def describe(request: httpx.Request) -> str:
    """`METHOD /path?query`, the name a message gives a call (never a header, never the token)."""
    return f"{request.method} {request.url.raw_path.decode('ascii')}"


def is_transient_response(status: int, body: str) -> bool:
    """Gateway statuses (docs/protocol.md#transient-errors), a sandbox not running yet, or the proxy
    failing to route."""
    if status in (401, 403):
        return False
    if status in TRANSIENT_STATUSES:
        return True
    if status == NOT_RUNNING_STATUS and NOT_RUNNING_MARKER in body:
        return True
    return any(marker in body for marker in PROXY_FAILURE_MARKERS)


def is_transient(error: BaseException) -> bool:
    """True when repeating the failed call may succeed.

    Unlike the reference, transport failures (connect errors, timeouts, resets) count too: the
    reference wrapped them so that its own check never saw them (docs/protocol.md#transient-errors).
    """
    if isinstance(error, AuthenticationError | AuthorizationError):
        return False
    if isinstance(error, TransportError | httpx.TimeoutException | httpx.NetworkError):
        return True
    if isinstance(error, ServerError) and error.status is not None:
        return error.transient or is_transient_response(error.status, error.body)
    return isinstance(error, ApiError) and error.transient


def error_for_status(
    request: httpx.Request, status: int, body: str, *, message: str | None = None
) -> ApiError:
    """The kiln error for a non-2xx answer (docs/protocol.md#status-mapping); `message` replaces the
    default wording."""
    reason = httpx.codes.get_reason_phrase(status)
    cls: type[ApiError]
    hint: str | None
    if status == 401:
        cls, fallback, hint = AuthenticationError, "Unauthorized", _AUTH_HINT
    elif status == 403:
        cls, fallback, hint = AuthorizationError, "Forbidden", _FORBIDDEN_HINT
    else:
        cls, hint = ServerError, None
        fallback = "Server error" if status >= 500 else "Request failed"
    transient = is_transient_response(status, body)
    text = message or f"{describe(request)}: HTTP {status} {reason} - {body or fallback}"
    return cls(
        text,
        status=status,
        body=body,
        transient=transient,
        hint=_TRANSIENT_HINT if transient else hint,
    )


def body_excerpt(response: httpx.Response) -> str:
    """The (read) response body as text, truncated, with the request's own token blanked out in
    case a server echoes request headers back in an error page."""
    text = response.text[:BODY_EXCERPT_CHARS].strip()
    authorization = response.request.headers.get("authorization", "")
    token = authorization.removeprefix(BEARER_PREFIX)
    return text.replace(token, REDACTED) if token else text


async def raise_for_status(response: httpx.Response) -> None:
    """Raise the error of docs/protocol.md#status-mapping for a non-2xx response (reading its body
    first if streamed)."""
    if response.is_success:
        return
    await response.aread()
    raise error_for_status(response.request, response.status_code, body_excerpt(response))


def transport_error(request: httpx.Request, exc: httpx.HTTPError) -> ApiError:
    """A kiln error for an httpx failure that produced no usable response."""
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, httpx.DecodingError):
        return ResponseError(f"{describe(request)}: undecodable response body ({detail})")
    return TransportError(f"{describe(request)}: {detail}", hint=_TRANSPORT_HINT)


async def send(http: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
    """Send and read the whole response, up to MAX_RESPONSE_BYTES (decoded); httpx failures
    become kiln errors, a longer body a ResponseError naming the call. Status unchecked.

    A call whose body is in memory waits for a place among the event loop's
    CALLS_PER_LOOP calls in flight (see there); a streamed upload does not."""
    try:
        if streamed(request):
            response, body = await _exchange(http, request)
        else:
            async with _calls_of_this_loop():
                response, body = await _exchange(http, request)
    except (httpx.TransportError, httpx.DecodingError) as exc:
        raise transport_error(request, exc) from exc
    # The body is already decoded: the copy must not claim a content encoding it no longer has.
    headers = response.headers.copy()
    headers.pop("content-encoding", None)
    return httpx.Response(
        response.status_code,
        headers=headers,
        content=body,
        request=request,
        extensions=response.extensions,
    )


# How many calls (a request and its whole answer) one event loop has in flight at once. Each
# answer costs a few hundred microseconds of CPU to parse and act on, and the loop runs every
# answer that has arrived in one turn before it looks at its timers again: 300 builds starting
# together made turns of 200-500 ms (benchmarks/ANALYSIS.md, section 3). Bounding the calls in
# flight bounds a turn to a few dozen answers, without slowing a build down: at 25 ms of
# latency, 32 calls in flight still make over a thousand calls a second.
CALLS_PER_LOOP = 32
_call_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def _calls_of_this_loop() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    gate = _call_gates.get(loop)
    if gate is None:
        gate = _call_gates[loop] = asyncio.Semaphore(CALLS_PER_LOOP)
    return gate


async def _exchange(
    http: httpx.AsyncClient, request: httpx.Request
) -> tuple[httpx.Response, bytes]:
    response = await http.send(request, stream=True)
    try:
        return response, await _read_bounded(response)
    finally:
        await response.aclose()


async def _read_bounded(response: httpx.Response) -> bytes:
    """The decoded body, counted as it arrives, so a compressed bomb is caught too."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > MAX_RESPONSE_BYTES:
            raise too_large(response.request, "response body", MAX_RESPONSE_BYTES)
    return bytes(body)


def too_large(request: httpx.Request, what: str, limit: int) -> ResponseError:
    """The error for a server sending more than kiln reads at once."""
    return ResponseError(
        f"{describe(request)}: {what} larger than {limit >> 20} MiB; kiln stopped reading it",
        hint="the server at the API URL is not answering as Tensorlake does; check the URL",
    )


@asynccontextmanager
async def open_stream(
    http: httpx.AsyncClient, request: httpx.Request
) -> AsyncIterator[httpx.Response]:
    """A streamed response, closed on exit; failures while reading it become kiln errors too."""
    try:
        response = await http.send(request, stream=True)
        try:
            yield response
        finally:
            await response.aclose()
    except (httpx.TransportError, httpx.DecodingError) as exc:
        raise transport_error(request, exc) from exc


def parse_json(response: httpx.Response) -> Any:
    """The response body as JSON, or a ResponseError naming the call."""
    try:
        return response.json()
    except ValueError as exc:
        raise ResponseError(
            f"{describe(response.request)}: response is not JSON ({exc})",
            status=response.status_code,
            body=body_excerpt(response),
        ) from exc
