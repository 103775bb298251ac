"""The HTTP transport under kiln's httpx clients: aiohttp's, one connection pool per event loop.

httpx stays the API every kiln client is written against (requests, responses, streams,
timeouts, its exceptions); what moves bytes is aiohttp, whose HTTP/1.1 parser is written in C.
Measured on this project's emulator (benchmarks/ANALYSIS.md, its table of changes), a request through
httpx's own stack (httpcore, h11, anyio) cost ~680 us of CPU, through this transport ~390 us.

All builds of one event loop share one pool: a process that drives many builds (a worker, a
service, ``kiln.start_build`` in a loop) keeps its connections to the platform and the sandbox
proxy alive between calls and between builds instead of opening two or three per build. The pool
is opened by the first client of a loop that sends a request and closed when the last client of
that loop is closed, so nothing outlives the builds that used it.

aiohttp's exceptions become httpx's (connect, read and protocol failures, timeouts), so the rest
of kiln (``kiln.api._http.transport_error``, the transient classification) sees what it saw
under httpx's own transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    import aiohttp

# Connections one event loop keeps to all hosts together (httpx's own default per client is
# 100). A build holds at most three at once (a call, its log stream, an upload beside it).
POOL_CONNECTIONS = 1000
# How long an idle kept-alive connection is kept: under the 5 s after which uvicorn (the emulator)
# closes one, so that kiln does not send on a connection the server is closing.
KEEPALIVE_S = 4.0
# Headers httpx already sets itself, or that kiln must not send: aiohttp adds none of them.
_SKIP_AUTO_HEADERS = frozenset({"User-Agent", "Accept", "Accept-Encoding", "Content-Type"})
_HTTP11 = {"http_version": b"HTTP/1.1"}


class _Pool:
    """One aiohttp session (its connector is the pool) and how many open clients use it."""

    def __init__(self, ssl_context: ssl.SSLContext) -> None:
        # Loaded with the first pool, not with kiln: a CLI command that sends nothing (help, a
        # plan, the store's housekeeping) does not pay for importing aiohttp (~0.1 s).
        import aiohttp

        connector = aiohttp.TCPConnector(
            ssl=ssl_context, limit=POOL_CONNECTIONS, keepalive_timeout=KEEPALIVE_S
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # httpx decodes what the server encoded
            cookie_jar=aiohttp.DummyCookieJar(),  # kiln keeps no cookies (nor did httpx's use)
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            raise_for_status=False,
            trust_env=False,  # httpx's client mounts its own proxies from the environment
        )
        # aiohttp sends an idempotent request again, once, when its connection fails (RFC 9112
        # allows it). kiln retries in one place, the machine's declared retry edges, with their
        # backoff, budget and events; a second, invisible retry below them would hide faults
        # (and double the requests of a failing server). aiohttp's own test client turns it
        # off the same way; the attribute has no public setter.
        if hasattr(self.session, "_retry_connection"):
            self.session._retry_connection = False
        self.users = 0


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pool] = weakref.WeakKeyDictionary()


class SharedTransport(httpx.AsyncBaseTransport):
    """An httpx transport sending through its event loop's shared aiohttp pool.

    Each kiln client owns one of these; closing it gives its share of the pool back.
    """

    def __init__(self, ssl_context: ssl.SSLContext) -> None:
        self._ssl = ssl_context
        self._pool: _Pool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def _acquire(self) -> _Pool:
        loop = asyncio.get_running_loop()
        if self._pool is not None and self._loop is loop:
            return self._pool
        if self._closed:
            raise httpx.TransportError("the HTTP client was closed")
        self._release()
        pool = _pools.get(loop)
        if pool is None or pool.session.closed:
            pool = _pools[loop] = _Pool(self._ssl)
        pool.users += 1
        self._pool, self._loop = pool, loop
        return pool

    def _release(self) -> _Pool | None:
        """Give this client's share back; the pool if nobody else uses it any more."""
        pool, loop = self._pool, self._loop
        self._pool = self._loop = None
        if pool is None or loop is None:
            return None
        pool.users -= 1
        if pool.users > 0:
            return None
        if _pools.get(loop) is pool:
            del _pools[loop]
        return pool

    async def aclose(self) -> None:
        self._closed = True
        pool = self._release()
        if pool is not None:
            await pool.session.close()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        import aiohttp
        import yarl

        session = self._acquire().session
        timeouts = request.extensions.get("timeout", {})
        headers = request.headers.multi_items()
        data: bytes | httpx.AsyncByteStream | None
        if streamed(request):
            # aiohttp frames a streamed body itself (chunked unless the caller set its length).
            data = request.stream  # type: ignore[assignment]
            headers = [(k, v) for k, v in headers if k.lower() != "transfer-encoding"]
        else:
            data = request.content or None
        with _mapped(request):
            response = await session._request(
                request.method,
                yarl.URL(str(request.url), encoded=True),
                headers=headers,
                data=data,
                allow_redirects=False,
                compress=None,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=timeouts.get("pool"),
                    sock_connect=timeouts.get("connect"),
                    sock_read=timeouts.get("read"),
                ),
            )
        extensions: dict[str, Any] = dict(_HTTP11)
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode("latin-1", "replace")
        return httpx.Response(
            response.status,
            headers=list(response.raw_headers),
            stream=_ResponseStream(request, response),
            request=request,
            extensions=extensions,
        )


def streamed(request: httpx.Request) -> bool:
    """Whether the request's body is still to be streamed (not held in memory)."""
    try:
        request.content  # noqa: B018  (raises for a body still to be streamed)
    except httpx.RequestNotRead:
        return True
    return False


class _ResponseStream(httpx.AsyncByteStream):
    """A response body as aiohttp receives it, each read handed on as soon as it arrives."""

    def __init__(self, request: httpx.Request, response: aiohttp.ClientResponse) -> None:
        self._request = request
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _mapped(self._request):
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        # A body read to its end gives the connection back to the pool; otherwise it is closed.
        self._response.release()
        # An answer that came before the whole request body was sent (a 502, a 411) leaves
        # aiohttp's writer task inside the body's generator: release() cancelled it, and waiting
        # for it to end lets whoever owns that generator close it ("aclose(): asynchronous
        # generator is already running" otherwise).
        await self._response.wait_for_close()


@contextlib.contextmanager
def _mapped(request: httpx.Request) -> Iterator[None]:
    """aiohttp's failures as the httpx exceptions httpx's own transport raises for them."""
    import aiohttp

    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:
        raise httpx.ConnectTimeout(_text(exc, "timed out connecting"), request=request) from exc
    except (aiohttp.SocketTimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise httpx.ReadTimeout(_text(exc, "timed out reading"), request=request) from exc
    except aiohttp.ClientConnectorError as exc:
        raise httpx.ConnectError(_text(exc, "could not connect"), request=request) from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise httpx.RemoteProtocolError(
            "Server disconnected without sending a response.", request=request
        ) from exc
    except aiohttp.ClientPayloadError as exc:
        raise httpx.RemoteProtocolError(
            _text(exc, "peer closed connection without sending complete message body"),
            request=request,
        ) from exc
    except aiohttp.ClientResponseError as exc:
        raise httpx.RemoteProtocolError(_text(exc, "malformed response"), request=request) from exc
    except aiohttp.InvalidURL as exc:
        raise httpx.UnsupportedProtocol(_text(exc, "invalid URL"), request=request) from exc
    except (aiohttp.ClientOSError, aiohttp.ClientConnectionError) as exc:
        raise httpx.ReadError(_text(exc, "connection failed"), request=request) from exc
    except aiohttp.ClientError as exc:
        raise httpx.RemoteProtocolError(_text(exc, "HTTP failure"), request=request) from exc
    except TimeoutError as exc:
        # aiohttp's own deadlines that are not socket ones (waiting for a pooled connection).
        raise httpx.PoolTimeout(_text(exc, "timed out waiting for a connection")) from exc


def _text(exc: BaseException, fallback: str) -> str:
    return str(exc) or fallback
