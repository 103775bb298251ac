"""The shared client: headers (docs/protocol.md#common-headers), status mapping
(docs/protocol.md#status-mapping), transient classification (docs/protocol.md#transient-errors)."""

import asyncio
import importlib.util
import re
import subprocess
import sys
from collections.abc import AsyncIterator

import httpx
import pytest

from kiln.api import ApiSettings, LifecycleClient, create_http_client, is_transient
from kiln.errors import (
    ApiError,
    AuthenticationError,
    AuthorizationError,
    ResponseError,
    ServerError,
    TransportError,
)
from kiln.testing import TEST_TOKEN

TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-01$")
SANDBOX_CALL = "GET /v1/namespaces/default/sandboxes/sbx1"


def local_settings() -> ApiSettings:
    return ApiSettings.from_env({}, api_url="http://127.0.0.1:8900", api_key=TEST_TOKEN)


def lifecycle(handler: httpx.MockTransport) -> LifecycleClient:
    settings = local_settings()
    return LifecycleClient(settings, create_http_client(settings, transport=handler))


def answering(status: int, body: str = "") -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(status, text=body))


async def get_error(status: int, body: str = "") -> ApiError:
    with pytest.raises(ApiError) as info:
        await lifecycle(answering(status, body)).get_sandbox("sbx1")
    return info.value


@pytest.mark.parametrize(
    ("status", "body", "kind", "text"),
    [
        (401, "", AuthenticationError, "Unauthorized"),
        (401, "bad key", AuthenticationError, "bad key"),
        (403, "", AuthorizationError, "Forbidden"),
        (500, "", ServerError, "Server error"),
        (503, "down", ServerError, "down"),
        (409, "", ServerError, "Request failed"),
        (404, "no such sandbox", ServerError, "no such sandbox"),
    ],
)
async def test_status_mapping(status: int, body: str, kind: type, text: str) -> None:
    error = await get_error(status, body)
    assert type(error) is kind
    assert error.status == status
    assert error.body == body
    assert str(error).startswith(f"{SANDBOX_CALL}: HTTP {status} ")
    assert str(error).endswith(text)


@pytest.mark.parametrize(
    ("status", "body", "transient"),
    [
        (502, "", True),
        (503, "", True),
        (504, "", True),
        (400, "sandbox is not running yet", True),
        (400, "bad request", False),
        (500, "upstream PROXY_ERROR", True),
        (404, "Failed to proxy request", True),
        (500, "boom", False),
        (401, "PROXY_ERROR", False),
        (403, "Failed to proxy request", False),
    ],
)
async def test_transient_classification(status: int, body: str, transient: bool) -> None:
    error = await get_error(status, body)
    assert error.transient is transient
    assert is_transient(error) is transient


def test_transient_classification_of_raw_and_constructed_errors() -> None:
    request = httpx.Request("GET", "http://x")
    assert is_transient(httpx.ConnectError("refused", request=request))
    assert is_transient(httpx.ReadTimeout("slow", request=request))
    assert is_transient(TransportError("reset"))
    assert is_transient(ServerError("gateway", status=502))
    assert not is_transient(AuthenticationError("no", status=401, body="PROXY_ERROR"))
    assert not is_transient(ResponseError("missing field"))
    assert not is_transient(ValueError("unrelated"))


async def test_connect_error_becomes_transient_transport_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(TransportError) as info:
        await lifecycle(httpx.MockTransport(refuse)).get_sandbox("sbx1")
    assert info.value.transient and is_transient(info.value)
    assert str(info.value).startswith(f"{SANDBOX_CALL}: ConnectError")


async def test_timeout_becomes_transport_error() -> None:
    def stall(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("", request=request)

    with pytest.raises(TransportError, match="ReadTimeout"):
        await lifecycle(httpx.MockTransport(stall)).get_sandbox("sbx1")


async def test_bad_json_is_a_response_error() -> None:
    with pytest.raises(ResponseError, match=f"{SANDBOX_CALL}: response is not JSON"):
        await lifecycle(answering(200, "<html>")).get_sandbox("sbx1")


async def test_every_request_carries_auth_agent_and_fresh_traceparent() -> None:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    client = lifecycle(httpx.MockTransport(record))
    await client.delete_sandbox("a")
    await client.delete_sandbox("b")
    for request in seen:
        assert request.headers["authorization"] == f"Bearer {TEST_TOKEN}"
        assert request.headers["user-agent"].startswith("kiln/")
        assert TRACEPARENT.match(request.headers["traceparent"])
    assert seen[0].headers["traceparent"] != seen[1].headers["traceparent"]


async def test_token_never_appears_in_errors_even_when_echoed() -> None:
    echo = f"your header was Authorization: Bearer {TEST_TOKEN}"
    for status in (401, 403, 500, 400):
        error = await get_error(status, echo)
        assert TEST_TOKEN not in str(error)
        assert TEST_TOKEN not in error.body
        assert TEST_TOKEN not in error.display()
    client = create_http_client(local_settings())
    assert TEST_TOKEN not in repr(client.headers)


def test_client_timeouts_bound_connect_and_reads() -> None:
    client = create_http_client(local_settings())
    assert client.timeout.connect == 10.0
    assert client.timeout.read == 300.0


def test_httpcore_s_per_request_event_loop_lookup_finds_sniffio_installed() -> None:
    # httpcore imports sniffio four times a request; when it is missing each import searches
    # sys.path again. kiln depends on sniffio for that, and leaves sys.modules alone.
    assert importlib.util.find_spec("sniffio") is not None
    probe = "import sys, kiln.api; print(sys.modules.get('sniffio', 'unloaded') is None)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert (done.returncode, done.stdout.strip()) == (0, "False"), done.stderr


async def test_a_loop_has_at_most_32_calls_in_flight_and_streamed_uploads_are_not_counted() -> None:
    from kiln.api._http import CALLS_PER_LOOP, send

    release = asyncio.Event()
    entered: list[str] = []

    async def hold(request: httpx.Request) -> httpx.Response:
        entered.append(request.method)
        await release.wait()
        return httpx.Response(200, text="ok")

    settings = local_settings()
    async with create_http_client(settings, transport=httpx.MockTransport(hold)) as http:
        calls = [
            asyncio.create_task(send(http, http.build_request("GET", f"{settings.api_url}/{i}")))
            for i in range(CALLS_PER_LOOP + 8)
        ]

        async def body() -> AsyncIterator[bytes]:
            yield b"context"

        upload = asyncio.create_task(
            send(http, http.build_request("PUT", f"{settings.api_url}/f", content=body()))
        )
        # Everything here runs on the loop without I/O: a hundred turns let every call that
        # may enter do so.
        for _ in range(100):
            await asyncio.sleep(0)
        assert entered.count("GET") == CALLS_PER_LOOP
        assert entered.count("PUT") == 1
        release.set()
        answers = await asyncio.gather(*calls, upload)
    assert [a.text for a in answers] == ["ok"] * (CALLS_PER_LOOP + 9)
    assert CALLS_PER_LOOP == 32
