"""The emulated network: faults, request log, latency and bandwidth, in front of a toy app."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from kiln.emulator.middleware import FaultRules, RequestLog, SseCutter, wrap_app
from kiln.errors import UsageError
from kiln.testing import TEST_TOKEN

STREAM_EVENTS = 5
LONG_STREAM_EVENTS = 10_000
READY_DEADLINE_S = 10.0


class ToyApp:
    """A few routes shaped like the emulator's: JSON, an upload sink, an SSE stream."""

    def __init__(self) -> None:
        self.calls = 0
        self.streamed = 0
        self.stream_finished = asyncio.Event()
        self.app = Starlette(
            routes=[
                Route("/hello", self.hello, methods=["GET", "POST"]),
                Route("/upload", self.upload, methods=["PUT"]),
                Route("/big", self.big),
                Route("/stream", self.stream),
                Route("/_emulator/ping", self.ping),
            ]
        )

    async def hello(self, request: Request) -> Response:
        self.calls += 1
        return JSONResponse({"hello": "world"})

    async def upload(self, request: Request) -> Response:
        return JSONResponse({"received": len(await request.body())})

    async def big(self, request: Request) -> Response:
        return Response(b"x" * int(request.query_params["size"]))

    async def ping(self, request: Request) -> Response:
        return JSONResponse({"pong": True})

    async def stream(self, request: Request) -> Response:
        count = int(request.query_params.get("n", STREAM_EVENTS))

        async def events() -> AsyncIterator[bytes]:
            try:
                for n in range(count):
                    self.streamed = n + 1
                    # Split each event across two chunks so the cutter must count across them.
                    yield f'data: {{"line": "{n}"'.encode()
                    yield b"}\n\n"
                    await asyncio.sleep(0)
            finally:
                self.stream_finished.set()

        return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture
def toy() -> ToyApp:
    return ToyApp()


@pytest.fixture
def log() -> RequestLog:
    return RequestLog()


@pytest.fixture
def faults() -> FaultRules:
    return FaultRules()


def make_client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://emu")


@pytest.fixture
async def client(
    toy: ToyApp, faults: FaultRules, log: RequestLog
) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(wrap_app(toy.app, faults=faults, log=log)) as c:
        yield c


async def add_fault(client: httpx.AsyncClient, rule: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/_emulator/faults", json=rule)
    assert response.status_code == 201, response.text
    added: dict[str, Any] = response.json()
    return added


def sse_data(text: str) -> list[str]:
    return [line for line in text.split("\n") if line.startswith("data:")]


# -- request log -------------------------------------------------------------------------------


async def test_log_records_each_app_request(client: httpx.AsyncClient) -> None:
    before = time.time()
    assert (await client.get("/hello", params={"path": "/var/lib/x"})).status_code == 200
    [entry] = (await client.get("/_emulator/requests")).json()
    assert entry["method"] == "GET"
    assert entry["path"] == "/hello"
    assert entry["query"] == {"path": "/var/lib/x"}
    assert entry["status"] == 200
    assert entry["sandbox"] is None
    assert before <= entry["time"] <= time.time()
    assert entry["duration_ms"] >= 0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"host": "sbx-42.local"}, "sbx-42"),
        ({"host": "sbx-42.local:9443"}, "sbx-42"),
        ({"x-tensorlake-sandbox-id": "sbx-7"}, "sbx-7"),
        ({"host": "emu"}, None),
    ],
)
async def test_log_names_the_sandbox_a_request_is_routed_to(
    client: httpx.AsyncClient, log: RequestLog, headers: dict[str, str], expected: str | None
) -> None:
    await client.get("/hello", headers=headers)
    assert log.entries()[0]["sandbox"] == expected


async def test_log_never_holds_credentials(client: httpx.AsyncClient) -> None:
    await client.post(
        "/hello",
        params={"path": "/b/spec.json", "X-Amz-Signature": TEST_TOKEN, "token": TEST_TOKEN},
        headers={"authorization": f"Bearer {TEST_TOKEN}"},
        content=TEST_TOKEN.encode(),
    )
    text = (await client.get("/_emulator/requests")).text
    assert TEST_TOKEN not in text
    assert json.loads(text)[0]["query"]["path"] == "/b/spec.json"


async def test_emulator_paths_are_neither_logged_nor_faulted(
    client: httpx.AsyncClient, log: RequestLog
) -> None:
    await add_fault(client, {"match": {"path": ".*"}, "action": {"status": 503}})
    assert (await client.get("/_emulator/ping")).json() == {"pong": True}
    assert (await client.get("/hello")).status_code == 503
    assert [e["path"] for e in log.entries()] == ["/hello"]


# -- fault rules -------------------------------------------------------------------------------


async def test_status_fault_answers_instead_of_the_app(
    client: httpx.AsyncClient, toy: ToyApp, log: RequestLog
) -> None:
    await add_fault(
        client,
        {"match": {"method": "GET", "path": "^/hello$"}, "action": {"status": 502, "body": "nope"}},
    )
    response = await client.get("/hello")
    assert (response.status_code, response.text) == (502, "nope")
    assert toy.calls == 0
    assert log.entries()[0]["status"] == 502


async def test_times_and_after_select_which_matches_fail(client: httpx.AsyncClient) -> None:
    await add_fault(
        client, {"match": {"path": "/hello"}, "action": {"status": 500}, "times": 2, "after": 1}
    )
    statuses = [(await client.get("/hello")).status_code for _ in range(5)]
    assert statuses == [200, 500, 500, 200, 200]
    [listed] = (await client.get("/_emulator/faults")).json()
    assert (listed["seen"], listed["fired"]) == (5, 2)


async def test_method_filter_leaves_other_methods_alone(client: httpx.AsyncClient) -> None:
    await add_fault(
        client, {"match": {"method": "post", "path": "hello"}, "action": {"status": 500}}
    )
    assert (await client.get("/hello")).status_code == 200
    assert (await client.post("/hello")).status_code == 500


async def test_first_applicable_rule_wins_and_exhausted_rules_step_aside(
    client: httpx.AsyncClient,
) -> None:
    await add_fault(client, {"match": {"path": "hello"}, "action": {"status": 502}, "times": 1})
    await add_fault(client, {"match": {"path": "hello"}, "action": {"status": 503}})
    statuses = [(await client.get("/hello")).status_code for _ in range(3)]
    assert statuses == [502, 503, 503]


async def test_delay_fault_holds_the_request_then_calls_the_app(
    client: httpx.AsyncClient, toy: ToyApp, log: RequestLog
) -> None:
    await add_fault(client, {"match": {"path": "hello"}, "action": {"delay_ms": 150}})
    started = time.monotonic()
    assert (await client.get("/hello")).status_code == 200
    assert time.monotonic() - started >= 0.15
    assert toy.calls == 1
    assert log.entries()[0]["duration_ms"] >= 150


async def test_list_and_clear(client: httpx.AsyncClient) -> None:
    added = await add_fault(client, {"match": {"path": "x"}, "action": {"reset": True}})
    assert added["id"]
    assert added["times"] is None
    assert added["after"] == 0
    assert added["action"] == {"reset": True}
    assert [r["id"] for r in (await client.get("/_emulator/faults")).json()] == [added["id"]]
    assert (await client.delete("/_emulator/faults")).status_code == 200
    assert (await client.get("/_emulator/faults")).json() == []
    assert (await client.get("/hello")).status_code == 200


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "rule must be a JSON object"),
        (b'{"match": {"path": "x"}}', "action is required"),
        (b'{"action": {"status": 502}, "tims": 1}', "unknown keys ['tims']"),
        (b'{"match": {"path": "("}, "action": {"status": 502}}', "not a valid regex"),
        (b'{"match": {"host": "x"}, "action": {"status": 502}}', "match has unknown keys"),
        (b'{"action": {"status": 502, "delay_ms": 5}}', "exactly one of"),
        (b'{"action": {}}', "exactly one of"),
        (b'{"action": {"status": 99}}', "action.status must be an integer >= 200"),
        (b'{"action": {"status": 600}}', "action.status must be <= 599"),
        (b'{"action": {"status": true}}', "action.status must be an integer"),
        (b'{"action": {"status": 502, "body": 1}}', "action.body must be a string"),
        (b'{"action": {"delay_ms": 5, "body": "x"}}', "action.body only goes with"),
        (b'{"action": {"reset": false}}', "action.reset must be true"),
        (b'{"action": {"cut_stream_after": -1}}', "cut_stream_after must be an integer >= 0"),
        (b'{"action": {"status": 502}, "times": 0}', "times must be an integer >= 1"),
        (b'{"action": {"status": 502}, "after": "1"}', "after must be an integer >= 0"),
    ],
)
async def test_invalid_rules_get_400_saying_what_is_wrong(
    client: httpx.AsyncClient, body: bytes, complaint: str
) -> None:
    response = await client.post("/_emulator/faults", content=body)
    assert response.status_code == 400
    assert complaint in response.json()["error"]
    assert "hint" in response.json()
    assert (await client.get("/_emulator/faults")).json() == []


def test_add_raises_a_usage_error_for_direct_callers(faults: FaultRules) -> None:
    with pytest.raises(UsageError, match="action is required"):
        faults.add({})


async def test_unsupported_method_on_faults_is_405(client: httpx.AsyncClient) -> None:
    assert (await client.put("/_emulator/faults")).status_code == 405


# -- SSE cuts ----------------------------------------------------------------------------------


async def test_cut_stream_ends_the_body_after_n_events(
    client: httpx.AsyncClient, toy: ToyApp, log: RequestLog
) -> None:
    rule = {"match": {"path": "/stream"}, "action": {"cut_stream_after": 2}, "times": 1}
    await add_fault(client, rule)
    response = await client.get("/stream", params={"n": LONG_STREAM_EVENTS})
    assert sse_data(response.text) == ['data: {"line": "0"}', 'data: {"line": "1"}']
    assert response.text.endswith("\n\n")
    # The app learns that its client went away, as with a real hang-up, and stops streaming.
    await asyncio.wait_for(toy.stream_finished.wait(), READY_DEADLINE_S)
    assert toy.streamed < LONG_STREAM_EVENTS
    assert log.entries()[0]["status"] == 200
    assert len(sse_data((await client.get("/stream")).text)) == STREAM_EVENTS


async def test_cut_stream_leaves_non_sse_responses_whole(client: httpx.AsyncClient) -> None:
    await add_fault(client, {"match": {"path": "/hello"}, "action": {"cut_stream_after": 0}})
    assert (await client.get("/hello")).json() == {"hello": "world"}


@settings(max_examples=60)
@given(
    events=st.lists(st.text(alphabet="ab:{} \n", max_size=8).map(str.strip), max_size=6),
    keep=st.integers(min_value=0, max_value=7),
    cuts=st.lists(st.integers(min_value=0, max_value=80), max_size=6),
)
def test_cutter_counts_events_whatever_the_chunking(
    events: list[str], keep: int, cuts: list[int]
) -> None:
    payloads = [e.replace("\n", " ") for e in events]
    stream = b"".join(f"data: {p}\n\n".encode() for p in payloads)
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    cutter = SseCutter(keep)
    sent = b""
    for chunk in chunks:
        end = cutter.feed(chunk)
        sent += chunk if end is None else chunk[:end]
        if end is not None:
            break
    expected = b"".join(f"data: {p}\n\n".encode() for p in payloads[:keep])
    assert sent == expected


@settings(max_examples=60)
@given(
    count=st.integers(min_value=0, max_value=6),
    keepalives=st.lists(st.booleans(), min_size=6, max_size=6),
    crlf=st.booleans(),
    keep=st.integers(min_value=1, max_value=7),
    cuts=st.lists(st.integers(min_value=0, max_value=120), max_size=6),
)
def test_cutter_skips_keepalive_comments_and_reads_crlf(
    count: int, keepalives: list[bool], crlf: bool, keep: int, cuts: list[int]
) -> None:
    # The cloud profile's wire: `: keepalive` blocks between events, id: lines, CRLF line ends.
    end = "\r\n" if crlf else "\n"
    blocks = []
    for number in range(1, count + 1):
        comment = f": keepalive{end}{end}" if keepalives[number - 1] else ""
        blocks.append(comment + f"id: {number}{end}data: {{}}{end}{end}")
    stream = "".join(blocks).encode()
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    cutter = SseCutter(keep)
    sent = b""
    for a, b in itertools.pairwise(bounds):
        cut = cutter.feed(stream[a:b])
        sent += stream[a:b] if cut is None else stream[a:b][:cut]
        if cut is not None:
            break
    assert sent == "".join(blocks[:keep]).encode()


# -- latency and bandwidth ---------------------------------------------------------------------


async def test_latency_delays_app_responses_only(toy: ToyApp, faults: FaultRules) -> None:
    log = RequestLog()
    async with make_client(wrap_app(toy.app, faults=faults, log=log, latency_ms=120)) as c:
        started = time.monotonic()
        await c.get("/_emulator/ping")
        assert time.monotonic() - started < 0.12
        started = time.monotonic()
        await c.get("/hello")
        assert time.monotonic() - started >= 0.12


async def test_bandwidth_paces_uploads_and_downloads(toy: ToyApp, faults: FaultRules) -> None:
    size = 300_000
    # 8 Mbit/s is 1 MB/s: each 300 kB body takes about 0.3 s, less the 16 KiB burst.
    app = wrap_app(toy.app, faults=faults, log=RequestLog(), bandwidth_mbps=8)
    async with make_client(app) as c:
        started = time.monotonic()
        assert (await c.put("/upload", content=b"u" * size)).json() == {"received": size}
        assert time.monotonic() - started >= 0.25
        started = time.monotonic()
        assert len((await c.get("/big", params={"size": size})).content) == size
        assert time.monotonic() - started >= 0.25


@pytest.mark.parametrize(
    ("options", "complaint"),
    [({"latency_ms": -1}, "latency_ms"), ({"bandwidth_mbps": 0}, "bandwidth_mbps")],
)
def test_wrap_app_rejects_impossible_links(
    toy: ToyApp, faults: FaultRules, options: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(UsageError, match=complaint):
        wrap_app(toy.app, faults=faults, log=RequestLog(), **options)


# -- reset over a real socket ------------------------------------------------------------------


@pytest.fixture
def served(toy: ToyApp, faults: FaultRules, log: RequestLog) -> Iterator[str]:
    app = wrap_app(toy.app, faults=faults, log=log)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + READY_DEADLINE_S
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        assert thread.is_alive(), "uvicorn exited during startup"
        threading.Event().wait(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(READY_DEADLINE_S)


def test_reset_is_a_transport_error_for_an_httpx_client(
    served: str, faults: FaultRules, log: RequestLog
) -> None:
    faults.add({"match": {"path": "/hello"}, "action": {"reset": True}, "times": 1})
    with httpx.Client(base_url=served) as c:
        # No status line at all: a client cannot mistake the drop for an answer.
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            c.get("/hello")
        assert c.get("/hello").json() == {"hello": "world"}
    assert [e["status"] for e in log.entries()] == [None, 200]
