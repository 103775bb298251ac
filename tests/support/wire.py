"""Shared fixtures for the emulator's own tests: a running emulator and a sandbox driver."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kiln.emulator import Emulator, EmulatorConfig

TOKEN = "emulator-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SANDBOXES = "/v1/namespaces/default/sandboxes"
BUILD_DIR = "/var/lib/tensorlake/rootfs-builder/build"
CREATE_BODY = {
    "image": "tensorlake/rootfs-builder:emulated",
    "resources": {"cpus": 2.0, "memory_mb": 4096, "disk_mb": 30720},
    "timeout_secs": 300,
}


def sse_events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]


def tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class SandboxDriver:
    """One sandbox, driven the way the official client drives it (start, follow, get)."""

    def __init__(self, http: httpx.Client, sandbox_id: str) -> None:
        self.http = http
        self.id = sandbox_id
        self.headers = {
            **AUTH,
            "Host": f"{sandbox_id}.local",
            "X-Tensorlake-Sandbox-Id": sandbox_id,
        }

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.request(method, path, headers=self.headers, **kwargs)

    def start(self, command: str, *args: str, root: bool = False, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"command": command, "args": list(args), **extra}
        if root:
            body["user"] = "root"
        response = self.request("POST", "/api/v1/processes", json=body)
        assert response.status_code == 200, response.text
        info: dict[str, Any] = response.json()
        return info

    def follow(self, pid: int) -> list[dict[str, Any]]:
        response = self.request("GET", f"/api/v1/processes/{pid}/output/follow")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/event-stream")
        return sse_events(response.text)

    def info(self, pid: int) -> dict[str, Any]:
        response = self.request("GET", f"/api/v1/processes/{pid}")
        assert response.status_code == 200, response.text
        info: dict[str, Any] = response.json()
        return info

    def run(
        self, command: str, *args: str, root: bool = False, **extra: Any
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Start, follow to the end, then read the final status."""
        pid = self.start(command, *args, root=root, **extra)["pid"]
        lines = self.follow(pid)
        return self.info(pid), lines

    def put(self, path: str, data: bytes) -> httpx.Response:
        return self.request("PUT", "/api/v1/files", params={"path": path}, content=data)

    def get(self, path: str) -> httpx.Response:
        return self.request("GET", "/api/v1/files", params={"path": path})


@pytest.fixture(scope="module")
def shared_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    # One server per module keeps the suite fast (stopping uvicorn costs a few hundred ms);
    # `emulator` resets it before every test, so tests still start from nothing.
    with Emulator(EmulatorConfig(data_dir=tmp_path_factory.mktemp("data"))) as emu:
        yield emu


@pytest.fixture
def emulator(shared_emulator: Emulator) -> Emulator:
    response = httpx.post(shared_emulator.url + "/_emulator/reset")
    assert response.status_code == 200
    return shared_emulator


@pytest.fixture
def http(emulator: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.url, headers=AUTH, timeout=30) as client:
        yield client


@pytest.fixture
def sandbox(http: httpx.Client) -> SandboxDriver:
    response = http.post(SANDBOXES, json=CREATE_BODY)
    assert response.status_code == 200, response.text
    return SandboxDriver(http, response.json()["sandbox_id"])


ROOTFS_BYTES = 10 * 1024**3
BUILDER_ARGS = ("--spec", f"{BUILD_DIR}/spec.json", "--metadata-out", f"{BUILD_DIR}/metadata.json")


def prepare(http: httpx.Client, name: str, dockerfile: str, **extra: Any) -> dict[str, Any]:
    body = {
        "name": name,
        "dockerfile": dockerfile,
        "baseImage": dockerfile.split()[1],
        "public": False,
        "rootfsNodeKind": "base",
        "parentTemplate": None,
        "additionalLocalImages": [],
        **extra,
    }
    response = http.post("/platform/v1/sandbox-template-builds", json=body)
    assert response.status_code == 200, response.text
    prepared: dict[str, Any] = response.json()
    return prepared


def stage_build(
    sandbox: SandboxDriver,
    prepared: dict[str, Any],
    dockerfile: str,
    files: dict[str, bytes],
    **spec_extra: Any,
) -> None:
    """Everything the client does before it starts the builder (reference §4, remote steps)."""
    sandbox.run("mkdir", "-p", BUILD_DIR, root=True)
    sandbox.run("chmod", "0777", BUILD_DIR, root=True)
    assert sandbox.put(f"{BUILD_DIR}/context.tar.gz", tar_gz(files)).status_code == 200
    sandbox.run("mkdir", "-p", f"{BUILD_DIR}/context")
    info, lines = sandbox.run(
        "tar", "-xzf", f"{BUILD_DIR}/context.tar.gz", "-C", f"{BUILD_DIR}/context"
    )
    assert info["exit_code"] == 0, lines
    spec = {
        **prepared,
        "dockerfile": dockerfile,
        "contextDir": f"{BUILD_DIR}/context",
        "baseImage": dockerfile.split()[1],
        "rootfsDiskBytes": ROOTFS_BYTES,
        **spec_extra,
    }
    assert sandbox.put(f"{BUILD_DIR}/spec.json", json.dumps(spec).encode()).status_code == 200


def run_builder(
    sandbox: SandboxDriver, **extra: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return sandbox.run(
        "/usr/local/bin/tl-rootfs-build", *BUILDER_ARGS, root=True, working_dir=BUILD_DIR, **extra
    )
