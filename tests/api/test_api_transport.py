"""The transport under every kiln client (kiln.api._transport): aiohttp's, one pool per event
loop, its failures as httpx's, no retry below the machine's. Real sockets on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from kiln.api import ApiSettings, create_http_client
from kiln.api._transport import _pools
from kiln.testing import TEST_TOKEN

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Server:
    """A raw HTTP/1.1 server on loopback: how many connections it accepted, what it read."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        finally:
            writer.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request: its head, and its body by Content-Length or chunked framing."""
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    body = b""
    if b"content-length:" in lower:
        length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
        body = await reader.readexactly(length)
    elif b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    return head + body


def keep_alive(answer: bytes = OK) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            writer.write(answer)
            await writer.drain()

    return handle


def settings(url: str) -> ApiSettings:
    return ApiSettings.from_env({}, api_url=url, api_key=TEST_TOKEN)


async def test_clients_of_one_loop_share_one_pool_and_the_last_one_closes_it() -> None:
    async with Server(keep_alive()) as server:
        config = settings(server.url)
        first, second = create_http_client(config), create_http_client(config)
        for client in (first, second, first, second):
            response = await client.get(f"{server.url}/x")
            assert response.text == "ok"
        # Four requests, one after the other, by two clients: one kept-alive connection.
        assert server.connections == 1
        await first.aclose()
        assert asyncio.get_running_loop() in _pools
        await second.aclose()
        assert asyncio.get_running_loop() not in _pools


async def test_a_client_sends_the_headers_httpx_sets_and_no_others() -> None:
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(OK)
        await writer.drain()

    async with Server(handle) as server, create_http_client(settings(server.url)) as client:
        await client.get(f"{server.url}/a%20b?path=%2Ftmp%2Fx")
    head = seen[0].decode()
    # The path and query go as they were encoded, not re-quoted.
    assert head.startswith("GET /a%20b?path=%2Ftmp%2Fx HTTP/1.1\r\n")
    names = [line.split(":")[0].lower() for line in head.split("\r\n")[1:] if line]
    assert sorted(names) == sorted(
        [
            "host",
            "accept",
            "accept-encoding",
            "connection",
            "user-agent",
            "authorization",
            "traceparent",
        ]
    )
    assert names.count("user-agent") == 1 and "kiln" in head.lower()


async def test_a_streamed_body_goes_chunked_unless_its_length_is_given() -> None:
    async with Server(keep_alive()) as server:
        seen: list[bytes] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                try:
                    seen.append(await read_request(reader))
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                writer.write(OK)
                await writer.drain()

        server.handler = handle

        async def parts() -> AsyncIterator[bytes]:
            yield b"abc"
            yield b"def"

        async with create_http_client(settings(server.url)) as client:
            await client.put(f"{server.url}/f", content=parts())
            await client.put(f"{server.url}/f", content=parts(), headers={"Content-Length": "6"})
    chunked, sized = (request.lower() for request in seen)
    assert b"transfer-encoding: chunked" in chunked and chunked.endswith(b"abcdef")
    assert b"content-length: 6" in sized and b"chunked" not in sized
    assert sized.endswith(b"abcdef")


async def test_a_refused_connection_is_httpx_s_connect_error() -> None:
    async with Server(keep_alive()) as server:
        url = server.url
    async with create_http_client(settings(url)) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{url}/x")


async def test_a_connection_reset_is_not_retried_below_the_machine() -> None:
    # aiohttp would send an idempotent request again on a failed connection; kiln's retries are
    # the machine's (declared, with backoff and events), so the failure must come up once.
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with Server(hang_up) as server:
        async with create_http_client(settings(server.url)) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(f"{server.url}/x")
        assert server.connections == 1


async def test_a_body_cut_short_is_a_protocol_error() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        await writer.drain()

    async with Server(cut) as server, create_http_client(settings(server.url)) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"{server.url}/x")


async def test_a_silent_server_is_a_read_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # until the client gives up

    async with Server(silent) as server, create_http_client(settings(server.url)) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(f"{server.url}/x", timeout=httpx.Timeout(5.0, read=0.05))


async def test_a_malformed_answer_is_a_protocol_error() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"this is not HTTP\r\n\r\n")
        await writer.drain()

    async with Server(garbage) as server, create_http_client(settings(server.url)) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"{server.url}/x")


async def test_an_early_answer_leaves_the_streamed_body_closable_by_its_owner() -> None:
    # The server answers 502 after the head, before the body: aiohttp's writer is still inside
    # the body's generator. Once the response is closed, the generator's owner can close it.
    got_head = asyncio.Event()
    more = asyncio.Event()

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        got_head.set()
        await reader.read()

    async def body() -> AsyncIterator[bytes]:
        yield b"first"
        await more.wait()  # never set: the generator sits here while the answer arrives
        yield b"never"

    parts = body()
    async with Server(refuse) as server, create_http_client(settings(server.url)) as client:
        request = client.build_request("PUT", f"{server.url}/f", content=parts)
        response = await client.send(request, stream=True)
        assert response.status_code == 502
        await response.aclose()
        await parts.aclose()  # raised "asynchronous generator is already running" before
    assert got_head.is_set()
