"""The Image Service client: against a mock transport for what it sends, against the emulator for
a whole build (docs/image-service.md)."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from kiln.api import (
    ApiSettings,
    CasBuild,
    ContextUpload,
    ImageServiceClient,
    create_http_client,
)
from kiln.emulator import Emulator, EmulatorConfig
from kiln.errors import ServerError
from kiln.testing import TEST_TOKEN
from support.polling import wait_until

DOCKERFILE = b"FROM python:3.12-slim\nRUN echo hi\n"
BODY = {
    "kind": "dockerfile",
    "name": "app",
    "dockerfile_path": "Dockerfile",
    "build_args": {},
    "disk_mb": 10240,
    "parents": [],
}
DEADLINE_S = 20.0


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig()) as running:
        yield running


@pytest.fixture
async def client(emulator: Emulator) -> AsyncIterator[ImageServiceClient]:
    httpx.post(emulator.url + "/_emulator/reset")
    settings = ApiSettings.from_env({}, api_url=emulator.url, api_key=TEST_TOKEN)
    async with create_http_client(settings) as http:
        yield ImageServiceClient(settings, http)


def context_archive(tmp_path: Path) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(DOCKERFILE)
        archive.addfile(info, io.BytesIO(DOCKERFILE))
    path = tmp_path / "context.tar"
    path.write_bytes(buffer.getvalue())
    return path


async def finished(client: ImageServiceClient, build_id: str) -> CasBuild:
    async def ended() -> CasBuild | None:
        build = await client.get_build(build_id)
        return build if build.status in ("succeeded", "failed") else None

    found: CasBuild = await wait_until(ended, timeout_s=DEADLINE_S)
    return found


async def test_a_build_runs_to_an_image(client: ImageServiceClient, tmp_path: Path) -> None:
    assert await client.image_by_name("app") is None
    build = await client.create_build(BODY, "request-1")
    assert build.context_upload is not None
    archive = context_archive(tmp_path)
    assert await client.upload_context(build.context_upload, archive) == archive.stat().st_size
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert (await client.seal(build.build_id, digest)).phase == "starting_builder"
    done = await finished(client, build.build_id)
    assert done.status == "succeeded"
    assert done.result is not None
    assert await client.image_by_name("app") == done.result


async def test_the_same_request_id_gets_the_same_build(client: ImageServiceClient) -> None:
    first = await client.create_build(BODY, "request-1")
    again = await client.create_build(BODY, "request-1")
    assert again.build_id == first.build_id


async def test_an_unknown_build_is_a_404(client: ImageServiceClient) -> None:
    with pytest.raises(ServerError) as raised:
        await client.get_build("build_nope")
    assert raised.value.status == 404


async def test_cancel_by_request_id_and_its_absence(client: ImageServiceClient) -> None:
    build = await client.create_build(BODY, "request-1")
    cancelled = await client.cancel(client_request_id="request-1")
    assert cancelled.outcome == "cancelled"
    assert cancelled.build is not None
    assert cancelled.build.build_id == build.build_id
    absent = await client.cancel(client_request_id="never")
    assert (absent.outcome, absent.build) == ("not_admitted", None)
    with pytest.raises(ValueError, match="exactly one"):
        await client.cancel()


async def test_the_upload_carries_no_credentials(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"build_id": "build_1", "status": "pending"})

    settings = ApiSettings.from_env(
        {}, api_url="https://api.tensorlake.ai", pat=TEST_TOKEN, organization_id="o", project_id="p"
    )
    archive = context_archive(tmp_path)
    async with create_http_client(settings, transport=httpx.MockTransport(handler)) as http:
        client = ImageServiceClient(settings, http)
        await client.upload_context(
            ContextUpload("https://store.example/put?sig=x", 1 << 20), archive
        )
        await client.get_build("build_1")
    put, get = seen
    assert put.headers["content-length"] == str(archive.stat().st_size)
    assert "transfer-encoding" not in put.headers
    for header in ("authorization", "x-forwarded-organization-id", "x-forwarded-project-id"):
        assert header not in put.headers
        assert header in get.headers
    assert put.content == archive.read_bytes()
    assert TEST_TOKEN not in str(put.headers)
