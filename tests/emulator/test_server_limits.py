"""The emulator as a server that others may poke at (issue 11, "The emulator as a server").

Each test reproduces one finding: the admin surface answered without the API key, a 600 MB blob
upload took 1.29 GB of memory, over-long names and odd upload ids gave HTTP 500, and a data
directory that is a file was reported as a port problem.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kiln.cli import main
from kiln.emulator import Emulator, EmulatorConfig
from kiln.errors import ConfigError
from kiln.testing import EmulatorClient, run_build
from support.paths import HELLO
from support.wire import CREATE_BODY, SANDBOXES, SandboxDriver

KEY = "the-only-key"
GUARDED = {"Authorization": f"Bearer {KEY}"}
# Large enough that holding it whole would dwarf the bound; the bound leaves room for the
# write batches, the HTTP stack and the test's own bookkeeping.
LARGE_BYTES = 48 * 1024 * 1024
CHUNK_BYTES = 256 * 1024
MEMORY_BOUND_BYTES = 20 * 1024 * 1024
LONG_NAME = "x" * 256


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    config = EmulatorConfig(data_dir=tmp_path_factory.mktemp("data"), api_key=KEY)
    with Emulator(config) as emu:
        yield emu


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/_emulator/sandboxes"),
        ("GET", "/_emulator/requests"),
        ("GET", "/_emulator/faults"),
        ("POST", "/_emulator/faults"),
        ("POST", "/_emulator/reset"),
        ("POST", "/_emulator/builder"),
        ("GET", "/_emulator/blobs?uri=s3://kiln-emulator/snapshots/x.tlsnap"),
        ("PUT", "/_emulator/blobs/snapshots/x.tlsnap"),
        ("GET", "/_emulator/blobs/snapshots/x.tlsnap?sig=forged"),
    ],
)
def test_the_admin_surface_needs_the_api_key(guarded: Emulator, method: str, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = httpx.request(method, guarded.url + path, headers=headers, json={})
        assert response.status_code == 401, response.text
        assert "--api-key" in response.json()["error"]
    assert httpx.get(guarded.url + "/_emulator/sandboxes", headers=GUARDED).status_code == 200


async def test_a_guarded_emulator_still_builds_through_signed_urls(guarded: Emulator) -> None:
    with EmulatorClient(guarded.url, token=KEY) as client:
        client.reset()
        run = await run_build(client, HELLO, api_key=KEY)
        assert run.outcome == "done", run.state.error
        [template] = client.templates()
    prepared = httpx.post(
        guarded.url + "/platform/v1/sandbox-template-builds",
        headers=GUARDED,
        json={"name": "n", "dockerfile": "FROM a\n", "baseImage": "a"},
    ).json()
    signed = prepared["upload"]["url"]
    # The signature is the permission, as with a pre-signed URL; a forged one is refused.
    assert httpx.put(signed, content=b"snapshot").status_code == 200
    assert httpx.put(signed.replace("sig=", "sig=0"), content=b"x").status_code == 401
    assert template["name"] == "hello"


def _peak_while(action: object) -> int:
    tracemalloc.start()
    try:
        assert callable(action)
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _chunks() -> Iterator[bytes]:
    block = b"\x5a" * CHUNK_BYTES
    for _ in range(LARGE_BYTES // CHUNK_BYTES):
        yield block


def test_blob_put_and_file_get_stream_in_bounded_memory(tmp_path: Path) -> None:
    with (
        Emulator(EmulatorConfig(data_dir=tmp_path)) as emu,
        httpx.Client(base_url=emu.url, headers=GUARDED, timeout=120) as http,
    ):
        url = "/_emulator/blobs/large/object"
        peak = _peak_while(lambda: http.put(url, content=_chunks()).raise_for_status())
        assert peak < MEMORY_BOUND_BYTES, f"blob PUT peaked at {peak} bytes"
        assert (tmp_path / "blobs" / "large" / "object").stat().st_size == LARGE_BYTES

        sandbox = SandboxDriver(http, http.post(SANDBOXES, json=CREATE_BODY).json()["sandbox_id"])
        assert sandbox.request(
            "PUT", "/api/v1/files", params={"path": "/tmp/large"}, content=_chunks()
        ).is_success

        def read_back() -> None:
            size = 0
            with http.stream(
                "GET", "/api/v1/files", params={"path": "/tmp/large"}, headers=sandbox.headers
            ) as response:
                for piece in response.iter_bytes():
                    size += len(piece)
            assert size == LARGE_BYTES

        peak = _peak_while(read_back)
        assert peak < MEMORY_BOUND_BYTES, f"file GET peaked at {peak} bytes"


def test_over_long_names_and_bad_upload_ids_are_400(tmp_path: Path) -> None:
    with (
        Emulator(EmulatorConfig(data_dir=tmp_path)) as emu,
        httpx.Client(base_url=emu.url, headers=GUARDED, timeout=30) as http,
    ):
        sandbox = SandboxDriver(http, http.post(SANDBOXES, json=CREATE_BODY).json()["sandbox_id"])
        for response in (
            sandbox.put(f"/tmp/{LONG_NAME}", b"x"),
            sandbox.get(f"/tmp/{LONG_NAME}"),
            http.put(f"/_emulator/blobs/{LONG_NAME}", content=b"x"),
            http.put(
                "/_emulator/blobs/k", params={"uploadId": "a/b", "partNumber": 1}, content=b"x"
            ),
        ):
            assert response.status_code == 400, response.text
        assert "too long" in sandbox.put(f"/tmp/{LONG_NAME}", b"x").json()["error"]


def test_a_data_dir_that_is_a_file_is_named_as_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_dir = tmp_path / "passwd"
    not_a_dir.write_text("root:x:0:0::/root:/bin/sh\n")
    with pytest.raises(ConfigError, match="is not a directory"):
        Emulator(EmulatorConfig(data_dir=not_a_dir)).start()
    assert main(["emulator", "--data-dir", str(not_a_dir)]) == 2
    err = capsys.readouterr().err
    assert f"--data-dir {not_a_dir} is not a directory" in err
    assert "cannot listen" not in err
    assert not_a_dir.read_text().startswith("root:")
