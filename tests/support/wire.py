"""The emulator's wire protocol spoken raw, as the official client speaks it: the emulator's own
tests use this rather than kiln's clients, so that a bug cannot hide by being on both sides."""

from __future__ import annotations

import io
import json
import tarfile
from typing import Any

import httpx

from kiln.testing import TEST_TOKEN

AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}
SANDBOXES = "/v1/namespaces/default/sandboxes"
TEMPLATE_BUILDS = "/platform/v1/sandbox-template-builds"
BY_NAME = "/platform/v1/sandbox-templates/by-name/"
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
    response = http.post(TEMPLATE_BUILDS, json=body)
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
    """Everything the client does before it starts the builder
    (docs/protocol.md#the-official-client)."""
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


def complete_body(metadata: dict[str, Any]) -> dict[str, Any]:
    """The complete call's body for the builder's metadata.json."""
    body = {
        "snapshotId": metadata["snapshot_id"],
        "snapshotUri": metadata["snapshot_uri"],
        "snapshotFormatVersion": metadata["snapshot_format_version"],
        "snapshotSizeBytes": metadata["snapshot_size_bytes"],
        "rootfsDiskBytes": metadata["rootfs_disk_bytes"],
        "rootfsNodeKind": metadata["rootfs_node_kind"],
    }
    if "parent_manifest_uri" in metadata:
        body["parentManifestUri"] = metadata["parent_manifest_uri"]
    return body


def build_template(http: httpx.Client, name: str, dockerfile: str, **extra: Any) -> dict[str, Any]:
    """A whole build through the emulator: prepare, stage, build, complete, delete."""
    prepared = prepare(http, name, dockerfile, **extra)
    created = http.post(SANDBOXES, json={"image": "i", "resources": {"disk_mb": 1024}})
    sandbox = SandboxDriver(http, created.json()["sandbox_id"])
    stage_build(sandbox, prepared, dockerfile, {"app.py": b"x"})
    info, lines = run_builder(sandbox)
    assert info["exit_code"] == 0, lines
    metadata = json.loads(sandbox.get(f"{BUILD_DIR}/metadata.json").content)
    response = http.post(
        f"{TEMPLATE_BUILDS}/{prepared['buildId']}/complete", json=complete_body(metadata)
    )
    assert response.status_code == 200, response.text
    http.delete(f"{SANDBOXES}/{sandbox.id}")
    template: dict[str, Any] = response.json()
    return template
