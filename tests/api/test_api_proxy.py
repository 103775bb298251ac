"""The proxy client against a mock transport: routing (docs/protocol.md#proxy-routing), processes,
SSE, files, signing."""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from kiln.api import (
    ApiSettings,
    ChunkedUploadRefused,
    ProxyClient,
    create_http_client,
    is_transient,
)
from kiln.api import _proxy as proxy_module
from kiln.api._models import OutputEvent, structure
from kiln.errors import ResponseError, ServerError, TransportError
from kiln.testing import TEST_TOKEN
from support import mock
from support.mock import Recorder

SSE = {"content-type": "text/event-stream"}
# Far more than socket buffers hold, so the server hangs up mid-body.
EARLY_REFUSAL_CHUNKS = 512
EARLY_REFUSAL_CHUNK_BYTES = 64 * 1024


def settings(proxy_override: str | None = None) -> ApiSettings:
    env = {"TENSORLAKE_SANDBOX_PROXY_URL": proxy_override} if proxy_override else {}
    return ApiSettings.from_env(env, api_url="https://api.tensorlake.ai", api_key=TEST_TOKEN)


class Server(Recorder):
    def proxy(
        self,
        sandbox_url: str | None = "https://sbx-1.sandbox.example",
        routing_hint: str | None = None,
        override: str | None = None,
        sandbox_id: str = "sbx-1",
    ) -> ProxyClient:
        config = settings(override)
        return ProxyClient.for_sandbox(
            config,
            self.http(config),
            sandbox_id=sandbox_id,
            sandbox_url=sandbox_url,
            routing_hint=routing_hint,
        )


def sse(*events: Any) -> bytes:
    return b"".join(f"data: {json.dumps(event)}\n\n".encode() for event in events)


def answer(status: int = 200, **kwargs: Any) -> mock.Handler:
    return lambda request: httpx.Response(status, **kwargs)


async def first_request(proxy_server: Server, proxy: ProxyClient) -> httpx.Request:
    await proxy.delete_file("/x")
    return proxy_server.requests[-1]


# --- routing (docs/protocol.md#proxy-routing) -----------------------------------------------------


# a loopback proxy gets the Host override (docs/protocol.md#proxy-routing)
async def test_explicit_localhost_proxy_sets_host_override() -> None:
    server = Server(answer())
    # The create response's ingress endpoint plays no part: only sandbox_url or the override.
    proxy = server.proxy(sandbox_url=None, override="http://localhost:9443", sandbox_id="sbx-123")
    request = await first_request(server, proxy)
    assert str(request.url).startswith("http://localhost:9443/api/v1/files?")
    assert request.headers["host"] == "sbx-123.local"
    assert request.headers["x-tensorlake-sandbox-id"] == "sbx-123"


# a remote proxy keeps its host (docs/protocol.md#proxy-routing)
async def test_remote_proxy_keeps_host_without_override() -> None:
    server = Server(answer())
    proxy = server.proxy(sandbox_url="https://sbx-1.sandbox.gcp-use4.tensorlake.ai/some/path")
    request = await first_request(server, proxy)
    assert request.url.host == "sbx-1.sandbox.gcp-use4.tensorlake.ai"
    assert request.url.path == "/api/v1/files"
    assert request.headers["host"] == "sbx-1.sandbox.gcp-use4.tensorlake.ai"
    assert request.headers["x-tensorlake-sandbox-id"] == "sbx-1"
    assert "x-tensorlake-route-hint" not in request.headers


# the proxy URL's precedence (docs/protocol.md#proxy-routing)
async def test_proxy_url_precedence() -> None:
    server = Server(answer())
    chosen = server.proxy(sandbox_url="  https://server.example  ", override="https://env.example")
    assert (await first_request(server, chosen)).url.host == "server.example"
    fallback = server.proxy(sandbox_url="   ", override="https://env.example")
    assert (await first_request(server, fallback)).url.host == "env.example"
    with pytest.raises(ResponseError, match="did not include sandbox_url") as info:
        server.proxy(sandbox_url=None, override=None)
    assert info.value.hint and "TENSORLAKE_SANDBOX_PROXY_URL" in info.value.hint


async def test_loopback_proxy_keeps_path_without_trailing_slash() -> None:
    server = Server(answer())
    proxy = server.proxy(sandbox_url="http://127.0.0.1:9443/proxy/")
    request = await first_request(server, proxy)
    assert request.url.path == "/proxy/api/v1/files"
    assert request.headers["host"] == "sbx-1.local"


async def test_ipv6_proxy_host_is_bracketed_and_route_hint_sent() -> None:
    server = Server(answer())
    proxy = server.proxy(sandbox_url="http://[::1]:7000/ignored", routing_hint="cell-4")
    request = await first_request(server, proxy)
    assert str(request.url).startswith("http://[::1]:7000/api/v1/files")
    assert request.headers["x-tensorlake-route-hint"] == "cell-4"


def test_invalid_proxy_url_is_a_response_error() -> None:
    with pytest.raises(ResponseError, match="not an absolute http"):
        Server(answer()).proxy(sandbox_url="sandbox.example")


# --- processes -----------------------------------------------------------------------------


async def test_run_is_one_request_and_collects_output() -> None:
    events = sse(
        {"pid": 12, "started_at": 1.0},
        {"line": "hello", "timestamp": 1.1},
        {"line": "warn", "timestamp": 1.2, "stream": "stderr"},
        {"exit_code": 0},
    )
    server = Server(answer(headers=SSE, content=b": heartbeat\n\n" + events))
    result = await server.proxy().run(
        "mkdir", ["-p", "/b"], user="root", env={"A": "1"}, working_dir="/b", timeout=5
    )
    assert len(server.requests) == 1
    request = server.requests[0]
    assert (request.method, request.url.path) == ("POST", "/api/v1/processes/run")
    assert request.headers["accept"] == "text/event-stream"
    assert json.loads(request.content) == {
        "command": "mkdir",
        "args": ["-p", "/b"],
        "env": {"A": "1"},
        "working_dir": "/b",
        "user": "root",
        "timeout": 5,
    }
    assert (result.pid, result.exit_code, result.signal, result.oom_killed) == (12, 0, None, False)
    assert (result.stdout, result.stderr) == (["hello"], ["warn"])


async def test_run_omits_optional_payload_keys() -> None:
    server = Server(answer(headers=SSE, content=sse({"signal": 9, "oom_killed": True})))
    result = await server.proxy().run("true", [])
    assert json.loads(server.requests[0].content) == {"command": "true", "args": []}
    assert (result.pid, result.signal, result.oom_killed) == (None, 9, True)


async def test_run_stream_ending_before_the_start_is_transient() -> None:
    server = Server(answer(headers=SSE, content=b": heartbeat\n\n"))
    with pytest.raises(TransportError, match="stream ended before the process started"):
        await server.proxy().run("true", [])


def _process(status: str, **fields: Any) -> dict[str, Any]:
    return {"pid": 7, "status": status, "command": "tar", "started_at": 0.0, **fields}


async def test_run_stream_ending_without_exit_falls_back_to_the_process_status() -> None:
    # An idle proxy closed the stream after the start: the status is polled until it ended.
    statuses = iter([_process("running"), _process("exited", exit_code=2)])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/processes/run":
            events = sse(
                {"pid": 7, "started_at": 0}, {"line": "bad", "timestamp": 0, "stream": "stderr"}
            )
            return httpx.Response(200, headers=SSE, content=events)
        assert request.url.path == "/api/v1/processes/7"
        return httpx.Response(200, json=next(statuses))

    server = Server(handler)
    result = await server.proxy().run("tar", ["-xzf", "a"])
    assert (result.pid, result.exit_code, result.stderr) == (7, 2, ["bad"])
    assert [r.url.path for r in server.requests].count("/api/v1/processes/7") == 2


class _SilentAfter(httpx.AsyncByteStream):
    """Sends ``head``, then stays open without a byte (a proxy that never closes the stream)."""

    def __init__(self, head: bytes) -> None:
        self._head = head

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._head
        await asyncio.Event().wait()


async def test_a_silent_run_stream_after_the_exit_is_not_waited_on() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/processes/run":
            return httpx.Response(
                200, headers=SSE, stream=_SilentAfter(sse({"pid": 7, "started_at": 0}))
            )
        return httpx.Response(200, json=_process("exited", exit_code=0))

    server = Server(handler)
    async with asyncio.timeout(30):
        result = await server.proxy().run("mkdir", ["-p", "/b"], silence_s=0.05)
    assert (result.pid, result.exit_code) == (7, 0)


async def test_a_run_past_its_timeout_is_a_transient_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proxy_module, "RUN_TIMEOUT_GRACE_S", 0.0)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/processes/run":
            return httpx.Response(
                200, headers=SSE, stream=_SilentAfter(sse({"pid": 7, "started_at": 0}))
            )
        return httpx.Response(200, json=_process("running"))

    server = Server(handler)
    with pytest.raises(TransportError, match=r"did not finish within 0\.2 s") as info:
        await server.proxy().run("tar", [], timeout=0.2, silence_s=0.05)
    assert is_transient(info.value)


async def test_run_rejects_a_non_sse_answer() -> None:
    server = Server(answer(json={"pid": 1}))
    with pytest.raises(ResponseError, match="expected text/event-stream"):
        await server.proxy().run("true", [])


async def test_run_maps_a_not_running_sandbox_to_transient() -> None:
    server = Server(answer(400, text="sandbox sbx-1 is not running"))
    with pytest.raises(ServerError) as info:
        await server.proxy().run("true", [])
    assert info.value.transient


PROCESS = {"pid": 5, "status": "running", "command": "tl", "args": ["--x"], "started_at": 1.0}


async def test_start_list_and_get_processes() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path == "/api/v1/processes":
            return httpx.Response(200, json={"processes": [PROCESS, {**PROCESS, "pid": 6}]})
        return httpx.Response(200, json=PROCESS)

    server = Server(handler)
    proxy = server.proxy()
    started = await proxy.start_process("tl", ["--x"], user="root")
    assert json.loads(server.requests[0].content) == {
        "command": "tl",
        "args": ["--x"],
        "user": "root",
    }
    assert (started.pid, started.args) == (5, ["--x"])
    assert [info.pid for info in await proxy.list_processes()] == [5, 6]
    assert (await proxy.get_process(5)).status == "running"
    assert server.requests[-1].url.path == "/api/v1/processes/5"


async def test_list_processes_without_list_is_named() -> None:
    server = Server(answer(json={}))
    with pytest.raises(ResponseError, match="missing field processes"):
        await server.proxy().list_processes()


async def test_follow_yields_output_and_skips_noise() -> None:
    body = (
        b": keepalive\n\n"
        + sse({"line": "a", "timestamp": 1})
        + b"data: garbage\n\n"
        + sse({"status": "ping"}, {"line": "b", "timestamp": 2, "stream": "stderr"})
    )
    server = Server(answer(headers=SSE, content=body))
    events = [event async for event in server.proxy().follow(5)]
    assert [(event.line, event.stream) for event in events] == [("a", "stdout"), ("b", "stderr")]
    assert server.requests[0].url.path == "/api/v1/processes/5/output/follow"
    assert server.requests[0].headers["accept"] == "text/event-stream"


async def test_follow_raises_on_error_status_and_wrong_content_type() -> None:
    with pytest.raises(ServerError, match="HTTP 502"):
        [event async for event in Server(answer(502)).proxy().follow(5)]
    with pytest.raises(ResponseError, match="expected text/event-stream"):
        [event async for event in Server(answer(text="x")).proxy().follow(5)]


async def test_follow_connection_drop_is_transient() -> None:
    async def dropping() -> AsyncIterator[bytes]:
        yield sse({"line": "a", "timestamp": 1})
        raise httpx.ReadError("connection reset")

    server = Server(lambda request: httpx.Response(200, headers=SSE, content=dropping()))
    seen: list[str] = []
    with pytest.raises(TransportError, match="ReadError") as info:
        async for event in server.proxy().follow(5):
            seen.append(event.line)
    assert seen == ["a"]
    assert info.value.transient


# --- files ----------------------------------------------------------------------------------


async def parts(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def test_put_bytes_sends_content_length_and_path_query() -> None:
    server = Server(answer(201))
    await server.proxy().put_file("/var/lib/b/spec.json", b"{}")
    request = server.requests[0]
    assert request.method == "PUT"
    assert request.url.params["path"] == "/var/lib/b/spec.json"
    assert request.headers["content-length"] == "2"
    assert "transfer-encoding" not in request.headers
    assert request.content == b"{}"


async def test_put_stream_is_chunked() -> None:
    server = Server(answer(200))
    await server.proxy().put_file("/b/context.tar.gz", parts(b"ab", b"cd"))
    request = server.requests[0]
    assert request.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in request.headers
    assert request.content == b"abcd"


async def test_put_stream_with_length_is_not_chunked() -> None:
    server = Server(answer(200))
    await server.proxy().put_file("/b/context.tar.gz", parts(b"ab", b"cd"), length=4)
    request = server.requests[0]
    assert request.headers["content-length"] == "4"
    assert "transfer-encoding" not in request.headers


@pytest.mark.parametrize(
    ("status", "body"), [(411, ""), (413, "chunked bodies not supported"), (400, "Length required")]
)
async def test_refused_chunked_upload_is_signalled(status: int, body: str) -> None:
    server = Server(answer(status, text=body))
    with pytest.raises(ChunkedUploadRefused) as info:
        await server.proxy().put_file("/b/a", parts(b"x"))
    assert info.value.status == status
    assert not info.value.transient


async def test_other_upload_failures_are_not_chunk_refusals() -> None:
    with pytest.raises(ServerError):
        await Server(answer(413, text="too large")).proxy().put_file("/b/a", parts(b"x"))
    with pytest.raises(ServerError):
        await Server(answer(411)).proxy().put_file("/b/a", b"x")


async def test_get_and_delete_file() -> None:
    server = Server(answer(200, content=b'{"snapshot_id": "s"}'))
    proxy = server.proxy()
    assert await proxy.get_file("/b/metadata.json") == b'{"snapshot_id": "s"}'
    await proxy.delete_file("/b/context.tar.gz")
    assert [(r.method, r.url.params["path"]) for r in server.requests] == [
        ("GET", "/b/metadata.json"),
        ("DELETE", "/b/context.tar.gz"),
    ]


async def test_missing_file_names_the_call() -> None:
    with pytest.raises(ServerError, match=r"^GET /api/v1/files\?path=%2Fnope: HTTP 404"):
        await Server(answer(404)).proxy().get_file("/nope")


# --- health and signing ---------------------------------------------------------------------


async def test_health() -> None:
    assert await Server(answer(json={"healthy": True})).proxy().health() is True
    assert await Server(answer(json={"healthy": False})).proxy().health() is False


async def test_sign_blob_posts_request_and_returns_opaque_json() -> None:
    signed = {"kind": "s3_multipart", "uri": "s3://b/final", "partUrls": ["u1"]}
    server = Server(answer(json=signed))
    request_body = {"target": {"kind": "blob", "uri": "s3://b/p"}, "op": {"kind": "get_blob"}}
    assert await server.proxy().sign_blob(request_body) == signed
    assert server.requests[0].url.path == "/api/v1/blob/sign"
    assert json.loads(server.requests[0].content) == request_body


async def test_early_411_over_a_real_socket_is_signalled() -> None:
    # A real HTTP/1.1 server (nginx without chunked support, say) answers 411 as soon as it has
    # the headers, then drains the body it refused ("lingering close") before hanging up; the
    # refusal must surface as ChunkedUploadRefused, not as a broken connection.
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        while await reader.read(EARLY_REFUSAL_CHUNK_BYTES):
            pass
        writer.close()

    async def large_archive() -> AsyncIterator[bytes]:
        for _ in range(EARLY_REFUSAL_CHUNKS):
            yield bytes(EARLY_REFUSAL_CHUNK_BYTES)

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = settings()
    try:
        async with create_http_client(config) as http:
            proxy = ProxyClient.for_sandbox(
                config,
                http,
                sandbox_id="sbx-1",
                sandbox_url=f"http://127.0.0.1:{port}",
                routing_hint=None,
            )
            with pytest.raises(ChunkedUploadRefused):
                await proxy.put_file("/b/context.tar.gz", large_archive())
    finally:
        server.close()
        await server.wait_closed()


# --- follow in lists, read ahead (a fast builder log) ---------------------------------------


async def test_follow_batches_hands_over_every_line_in_order_across_chunks() -> None:
    body = sse(*({"line": f"l{n}", "timestamp": n} for n in range(500)))
    cuts = [body[i : i + 97] for i in range(0, len(body), 97)]  # events split anywhere
    server = Server(lambda request: httpx.Response(200, headers=SSE, content=parts(*cuts)))
    async with contextlib.aclosing(server.proxy().follow_batches(5)) as batches:
        got = [batch async for batch in batches]
    assert all(got), "no empty list, and no silence without silence_s"
    assert [event.line for batch in got if batch for event in batch] == [
        f"l{n}" for n in range(500)
    ]


async def test_follow_batches_reports_a_silence_and_goes_on_reading() -> None:
    resume = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield sse({"line": "a", "timestamp": 1})
        await resume.wait()
        yield sse({"line": "b", "timestamp": 2})

    server = Server(lambda request: httpx.Response(200, headers=SSE, content=slow()))
    got: list[list[str] | None] = []
    async with contextlib.aclosing(server.proxy().follow_batches(5, silence_s=0.01)) as batches:
        async for batch in batches:
            got.append(None if batch is None else [event.line for event in batch])
            if batch is None:
                resume.set()
    # "b" waits for a silence to be reported (under load one may come before "a" too).
    assert None in got
    assert [line for batch in got if batch for line in batch] == ["a", "b"]


async def test_keepalive_comments_do_not_hide_a_silence_from_follow_batches() -> None:
    async def line_then_keepalives() -> AsyncIterator[bytes]:
        yield sse({"line": "a", "timestamp": 1})
        while True:
            yield b": keepalive\n\n"
            await asyncio.sleep(0.002)

    server = Server(
        lambda request: httpx.Response(200, headers=SSE, content=line_then_keepalives())
    )
    got: list[list[str] | None] = []
    async with contextlib.aclosing(server.proxy().follow_batches(5, silence_s=0.05)) as batches:
        async for batch in batches:
            got.append(None if batch is None else [event.line for event in batch])
            if got.count(None) == 2:
                break
    assert [line for batch in got if batch for line in batch] == ["a"]


async def test_read_ahead_gives_lists_in_order_then_the_error() -> None:
    async def items() -> AsyncIterator[int]:
        for n in range(1000):
            yield n
        raise httpx.ReadError("reset")

    seen: list[int] = []
    with pytest.raises(httpx.ReadError):
        async with contextlib.aclosing(proxy_module.read_ahead(items(), None)) as lists:
            async for got in lists:
                assert got is not None
                assert 0 < len(got) <= proxy_module.READ_AHEAD_ITEMS + 1
                seen.extend(got)
    assert seen == list(range(1000))


async def test_with_silences_still_gives_items_one_by_one_and_nones() -> None:
    gate = asyncio.Event()

    async def items() -> AsyncIterator[str]:
        yield "a"
        yield "b"
        await gate.wait()
        yield "c"

    seen: list[str | None] = []
    async with contextlib.aclosing(proxy_module.with_silences(items(), 0.01)) as stream:
        async for item in stream:
            seen.append(item)
            if item is None:
                gate.set()
    assert None in seen
    assert [item for item in seen if item is not None] == ["a", "b", "c"]


@hypothesis_settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.dictionaries(
            st.sampled_from(["line", "timestamp", "stream", "other"]),
            st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=3)),
        ),
        st.lists(st.integers(), max_size=2),
        st.text(max_size=3),
    )
)
def test_the_output_event_fast_path_agrees_with_the_converter(data: Any) -> None:
    try:
        expected: OutputEvent | None = structure(data, OutputEvent, "output event")
    except ResponseError:
        expected = None
    assert proxy_module.output_event(data) == expected
