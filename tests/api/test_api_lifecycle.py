"""The lifecycle client against a mock transport (docs/protocol.md#create-sandbox)."""

import json
from typing import Any

import pytest

from kiln.api import ApiSettings, LifecycleClient
from kiln.errors import ResponseError, ServerError
from kiln.testing import TEST_TOKEN
from support.mock import Recorder, answer


class Server(Recorder):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(answer(status, body))

    def client(self, api_url: str = "http://127.0.0.1:8900") -> LifecycleClient:
        settings = ApiSettings.from_env({}, api_url=api_url, api_key=TEST_TOKEN, namespace="ns")
        return LifecycleClient(settings, self.http(settings))


async def test_create_sends_snake_case_body_to_namespaced_route() -> None:
    server = Server(200, {"sandbox_id": "sbx1", "status": "pending", "sandbox_url": "http://p"})
    created = await server.client().create_sandbox(
        image="tensorlake/rootfs-builder", cpus=2.0, memory_mb=4096, disk_mb=30720, timeout_secs=300
    )
    request = server.requests[0]
    assert str(request.url) == "http://127.0.0.1:8900/v1/namespaces/ns/sandboxes"
    assert json.loads(request.content) == {
        "image": "tensorlake/rootfs-builder",
        "resources": {"cpus": 2.0, "memory_mb": 4096, "disk_mb": 30720},
        "timeout_secs": 300,
    }
    assert (created.sandbox_id, created.status, created.sandbox_url) == (
        "sbx1",
        "pending",
        "http://p",
    )
    assert created.routing_hint is None


async def test_create_uses_sandbox_host_for_saas() -> None:
    server = Server(200, {"sandbox_id": "sbx1", "status": "pending"})
    await server.client("https://api.tensorlake.ai").create_sandbox(
        image="i", cpus=1.0, memory_mb=1, disk_mb=1, timeout_secs=1
    )
    assert str(server.requests[0].url) == "https://sandbox.tensorlake.ai/sandboxes"


async def test_create_reads_a_504_body_that_names_the_sandbox() -> None:
    server = Server(504, {"sandbox_id": "sbx2", "status": "pending", "routing_hint": "r1"})
    created = await server.client().create_sandbox(
        image="i", cpus=1.0, memory_mb=1, disk_mb=1, timeout_secs=1
    )
    assert (created.sandbox_id, created.routing_hint) == ("sbx2", "r1")


async def test_create_504_without_a_sandbox_is_a_transient_server_error() -> None:
    server = Server(504, "gateway timeout")
    with pytest.raises(ServerError) as info:
        await server.client().create_sandbox(
            image="i", cpus=1.0, memory_mb=1, disk_mb=1, timeout_secs=1
        )
    assert info.value.status == 504 and info.value.transient


async def test_create_missing_status_is_named() -> None:
    server = Server(200, {"sandbox_id": "sbx1"})
    with pytest.raises(ResponseError, match="create sandbox response: missing field status"):
        await server.client().create_sandbox(
            image="i", cpus=1.0, memory_mb=1, disk_mb=1, timeout_secs=1
        )


async def test_get_reads_sandbox_and_accepts_id_alias() -> None:
    body = {"id": "sbx1", "namespace": "ns", "status": "running", "routing_hint": "h", "x": 1}
    server = Server(200, body)
    info = await server.client().get_sandbox("sbx1")
    assert str(server.requests[0].url) == "http://127.0.0.1:8900/v1/namespaces/ns/sandboxes/sbx1"
    assert (info.sandbox_id, info.status, info.routing_hint) == ("sbx1", "running", "h")
    assert info.raw["x"] == 1


async def test_delete_sends_delete() -> None:
    server = Server(204, "")
    await server.client().delete_sandbox("sbx1")
    assert server.requests[0].method == "DELETE"
    assert server.requests[0].url.path == "/v1/namespaces/ns/sandboxes/sbx1"


async def test_delete_failure_names_the_call() -> None:
    server = Server(500, "")
    with pytest.raises(ServerError, match=r"^DELETE /v1/namespaces/ns/sandboxes/sbx1: HTTP 500"):
        await server.client().delete_sandbox("sbx1")


@pytest.mark.parametrize("status", [200, 204, 404])
async def test_ensure_deleted_counts_an_unknown_sandbox_as_deleted(status: int) -> None:
    server = Server(status, {})
    await server.client().ensure_deleted("sbx1")
    assert server.requests[0].method == "DELETE"


async def test_ensure_deleted_raises_any_other_error() -> None:
    with pytest.raises(ServerError):
        await Server(500, {"message": "boom"}).client().ensure_deleted("sbx1")


@pytest.mark.parametrize(
    ("status", "body", "gone"),
    [
        (404, {}, True),
        (200, {"sandbox_id": "sbx1", "namespace": "ns", "status": "terminated"}, True),
        (200, {"sandbox_id": "sbx1", "namespace": "ns", "status": "running"}, False),
    ],
)
async def test_is_gone_reads_404_and_terminated_as_gone(status: int, body: Any, gone: bool) -> None:
    server = Server(status, body)
    assert await server.client().is_gone("sbx1") is gone
    assert server.requests[0].method == "GET"


async def test_is_gone_raises_an_unclear_answer() -> None:
    with pytest.raises(ServerError):
        await Server(500, {"message": "boom"}).client().is_gone("sbx1")
