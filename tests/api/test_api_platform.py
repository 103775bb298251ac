"""The platform client against a mock transport (docs/protocol.md#template-lookup,
docs/protocol.md#auth-modes)."""

import json
from typing import Any

import httpx
import pytest

from kiln.api import ApiSettings, PlatformClient
from kiln.errors import AuthenticationError, AuthorizationError, ResponseError, ServerError
from kiln.testing import TEST_TOKEN
from support import mock
from support.mock import answer

API = "https://api.tensorlake.ai"
PREPARED: dict[str, Any] = {
    "buildId": "build-1",
    "snapshotId": "snapshot-prepared",
    "snapshotUri": "s3://bucket/prepared.tlsnap",
    "rootfsNodeKind": "diff",
    "builder": {
        "image": "tensorlake/rootfs-builder",
        "command": "tl-rootfs-build",
        "cpus": 2.0,
        "memoryMb": 4096,
        "diskMb": 30720,
    },
    "parent": {"parentManifestUri": "s3://bucket/parent.tlsnap", "rootfsDiskBytes": 21474836480},
    "upload": {"kind": "single_put", "url": "https://s3/put"},
}


def api_key_settings() -> ApiSettings:
    return ApiSettings.from_env({}, api_url=API, api_key=TEST_TOKEN)


def pat_settings() -> ApiSettings:
    return ApiSettings.from_env(
        {}, api_url=API, pat=TEST_TOKEN, organization_id="org-1", project_id="p-1"
    )


class Recorder(mock.Recorder):
    def client(self, settings: ApiSettings) -> PlatformClient:
        return PlatformClient(settings, self.http(settings))


# template names are percent-encoded (docs/protocol.md#template-lookup)
async def test_template_name_is_percent_encoded_on_token_route() -> None:
    server = Recorder(answer(404, {}))
    assert (
        await server.client(api_key_settings()).get_template("tensorlake/python:3.12-slim") is None
    )
    request = server.requests[0]
    assert request.url.raw_path == (
        b"/platform/v1/sandbox-templates/by-name/tensorlake%2Fpython%3A3.12-slim"
    )
    assert request.headers["accept"] == "application/json"


# an API key sends no scope headers (docs/protocol.md#auth-modes)
async def test_api_key_client_sends_bearer_and_no_scope_headers() -> None:
    server = Recorder(answer(404, {}))
    await server.client(api_key_settings()).get_template("ubuntu")
    headers = server.requests[0].headers
    assert headers["authorization"] == f"Bearer {TEST_TOKEN}"
    assert not [name for name in headers if name.lower().startswith("x-forwarded-")]


async def test_pat_client_uses_scoped_route_and_headers() -> None:
    server = Recorder(answer(200, PREPARED))
    await server.client(pat_settings()).prepare({"name": "x"})
    request = server.requests[0]
    assert (
        request.url.path == "/platform/v1/organizations/org-1/projects/p-1/sandbox-template-builds"
    )
    assert request.headers["x-forwarded-organization-id"] == "org-1"
    assert request.headers["x-forwarded-project-id"] == "p-1"


async def test_template_hit_is_typed() -> None:
    body = {
        "id": "tmpl-1",
        "name": "ubuntu-minimal",
        "snapshotId": "snap-1",
        "snapshotFormatVersion": "durable_archive_v1",
        "rootfsNodeKind": "base",
        "rootfsDiskBytes": 1024,
        "public": True,
        "futureField": [1, 2],
    }
    server = Recorder(answer(200, body))
    template = await server.client(api_key_settings()).get_template("ubuntu-minimal")
    assert template is not None
    assert (template.id, template.snapshot_id, template.public) == ("tmpl-1", "snap-1", True)
    assert template.rootfs_disk_bytes == 1024
    assert template.raw == body


# a template missing a required field (docs/protocol.md#template-lookup)
@pytest.mark.parametrize(
    ("missing", "noun"), [("id", "an id"), ("name", "a name"), ("snapshotId", "a snapshot id")]
)
async def test_template_without_required_field(missing: str, noun: str) -> None:
    body = {"id": "tmpl-1", "name": "n", "snapshotId": "snap-1"}
    del body[missing]
    server = Recorder(answer(200, body))
    with pytest.raises(ResponseError, match=f"lookup for 'ubuntu' without {noun}$"):
        await server.client(api_key_settings()).get_template("ubuntu")


async def test_template_lookup_other_status_is_fatal() -> None:
    server = Recorder(answer(403, {}))
    with pytest.raises(AuthorizationError):
        await server.client(api_key_settings()).get_template("ubuntu")


async def test_prepare_sends_body_and_keeps_raw() -> None:
    server = Recorder(answer(201, PREPARED))
    body: dict[str, Any] = {"name": "hello", "parentTemplate": None, "additionalLocalImages": []}
    prepared = await server.client(api_key_settings()).prepare(body)
    request = server.requests[0]
    assert request.method == "POST"
    assert request.url.path == "/platform/v1/sandbox-template-builds"
    assert json.loads(request.content) == body
    assert prepared.build_id == "build-1"
    assert prepared.parent is not None
    assert prepared.parent.parent_manifest_uri == "s3://bucket/parent.tlsnap"
    assert prepared.raw == PREPARED


@pytest.mark.parametrize(("status", "transient"), [(400, False), (503, True), (500, False)])
async def test_prepare_failure_wording(status: int, transient: bool) -> None:
    server = Recorder(lambda request: httpx.Response(status, text="quota exceeded"))
    with pytest.raises(ServerError) as info:
        await server.client(api_key_settings()).prepare({})
    assert str(info.value) == (
        f"failed to prepare sandbox image build (HTTP {status}): quota exceeded"
    )
    assert info.value.transient is transient


async def test_prepare_401_is_an_authentication_error() -> None:
    server = Recorder(lambda request: httpx.Response(401, text="bad token"))
    with pytest.raises(AuthenticationError, match=r"prepare sandbox image build \(HTTP 401\)"):
        await server.client(api_key_settings()).prepare({})


async def test_prepare_missing_field_names_it() -> None:
    body = {**PREPARED, "builder": {**PREPARED["builder"]}}
    del body["builder"]["cpus"]
    server = Recorder(answer(200, body))
    with pytest.raises(ResponseError, match=r"^prepare response: missing field builder\.cpus$"):
        await server.client(api_key_settings()).prepare({})


async def test_complete_posts_to_build_and_returns_template() -> None:
    server = Recorder(answer(200, {"id": "tmpl-9", "name": "hello"}))
    result = await server.client(pat_settings()).complete("b1", {"snapshotId": "s"})
    request = server.requests[0]
    assert request.url.path == (
        "/platform/v1/organizations/org-1/projects/p-1/sandbox-template-builds/b1/complete"
    )
    assert json.loads(request.content) == {"snapshotId": "s"}
    assert result == {"id": "tmpl-9", "name": "hello"}


async def test_complete_failure_wording() -> None:
    server = Recorder(lambda request: httpx.Response(409, text="already done"))
    with pytest.raises(ServerError, match=r"^failed to complete sandbox image build \(HTTP 409\)"):
        await server.client(api_key_settings()).complete("b1", {})


async def test_introspect_sends_empty_body_and_reads_scope() -> None:
    server = Recorder(answer(200, {"organizationId": "org-7", "projectId": "proj-7"}))
    assert await server.client(api_key_settings()).introspect() == ("org-7", "proj-7")
    request = server.requests[0]
    assert request.url.path == "/platform/v1/keys/introspect"
    assert request.headers["content-length"] == "0"


async def test_introspect_failure_is_an_authentication_error() -> None:
    server = Recorder(lambda request: httpx.Response(500, text="nope"))
    with pytest.raises(AuthenticationError, match=r"^API key introspection failed \(HTTP 500\)"):
        await server.client(api_key_settings()).introspect()
