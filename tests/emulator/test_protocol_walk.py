"""The official client's exact legacy build, request by request
(docs/protocol.md#the-official-client), done by hand."""

from __future__ import annotations

import io
import json
import tarfile

import httpx

from kiln.emulator import Emulator
from kiln.testing import EmulatorClient
from support.wire import (
    AUTH,
    BUILD_DIR,
    ROOTFS_BYTES,
    SandboxDriver,
    complete_body,
    sse_events,
    tar_gz,
)

DOCKERFILE = "FROM python:3.12-slim\nWORKDIR /app\nCOPY hello.py .\nRUN pip install nothing\n"
CONTEXT = {"hello.py": b"print('hi')\n", "Dockerfile": DOCKERFILE.encode()}
BUILDER_PATH = "/usr/local/bin/tl-rootfs-build"
BUILDER_ENV = {"PATH": "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
# docs/protocol.md#the-official-client: this many requests for a legacy Dockerfile build.
OFFICIAL_REQUEST_COUNT = 34


def _step(
    sandbox: SandboxDriver, body: dict[str, object]
) -> tuple[dict[str, object], list[dict[str, object]]]:
    """One process cycle as the client does it: POST, follow, GET."""
    started = sandbox.request("POST", "/api/v1/processes", json=body)
    assert started.status_code == 200, started.text
    pid = started.json()["pid"]
    follow = sandbox.request("GET", f"/api/v1/processes/{pid}/output/follow")
    assert follow.headers["content-type"].startswith("text/event-stream")
    final = sandbox.request("GET", f"/api/v1/processes/{pid}").json()
    assert final["exit_code"] == 0, (body, follow.text)
    return final, sse_events(follow.text)


def test_the_official_request_sequence_completes_a_build(
    admin: EmulatorClient, emulator: Emulator
) -> None:
    api = httpx.Client(base_url=emulator.url, headers={**AUTH, "Accept": "application/json"})
    lookup = api.get("/platform/v1/sandbox-templates/by-name/python:3.12-slim")
    assert lookup.status_code == 404
    prepared = api.post(
        "/platform/v1/sandbox-template-builds",
        json={
            "name": "hello",
            "dockerfile": DOCKERFILE,
            "baseImage": "python:3.12-slim",
            "public": False,
            "rootfsNodeKind": "base",
            "parentTemplate": None,
            "additionalLocalImages": [],
        },
    ).json()
    builder = prepared["builder"]
    created = api.post(
        "/v1/namespaces/default/sandboxes",
        json={
            "image": builder["image"],
            "resources": {
                "cpus": builder["cpus"],
                "memory_mb": builder["memoryMb"],
                "disk_mb": builder["diskMb"],
            },
            "timeout_secs": 300,
        },
    ).json()
    sandbox_id = created["sandbox_id"]
    assert created["sandbox_url"] == emulator.url
    got = api.get(f"/v1/namespaces/default/sandboxes/{sandbox_id}").json()
    assert got["status"] == "running"
    assert {"cpus", "memory_mb", "disk_mb"} <= set(got["resources"])
    assert got["namespace"] == "default"

    sandbox = SandboxDriver(httpx.Client(base_url=got["sandbox_url"]), sandbox_id)
    _step(sandbox, {"command": "/bin/true", "args": []})
    _step(sandbox, {"command": "mkdir", "args": ["-p", BUILD_DIR], "user": "root"})
    _step(sandbox, {"command": "chmod", "args": ["0777", BUILD_DIR], "user": "root"})
    _step(sandbox, {"command": "mkdir", "args": ["-p", BUILD_DIR]})
    assert sandbox.put(f"{BUILD_DIR}/context.tar.gz", tar_gz(CONTEXT)).status_code == 200
    _step(sandbox, {"command": "mkdir", "args": ["-p", f"{BUILD_DIR}/context"]})
    archive, context = f"{BUILD_DIR}/context.tar.gz", f"{BUILD_DIR}/context"
    _step(sandbox, {"command": "tar", "args": ["-xzf", archive, "-C", context]})
    deleted = sandbox.request("DELETE", "/api/v1/files", params={"path": archive})
    assert deleted.status_code == 200
    _step(sandbox, {"command": "mkdir", "args": ["-p", BUILD_DIR]})
    spec = {
        **prepared,
        "dockerfile": DOCKERFILE,
        "contextDir": context,
        "baseImage": "python:3.12-slim",
        "rootfsDiskBytes": ROOTFS_BYTES,
    }
    assert sandbox.put(f"{BUILD_DIR}/spec.json", json.dumps(spec, indent=2).encode()).is_success
    builder_args = [
        "--spec",
        f"{BUILD_DIR}/spec.json",
        "--metadata-out",
        f"{BUILD_DIR}/metadata.json",
    ]
    _, log = _step(
        sandbox,
        {
            "command": BUILDER_PATH,
            "args": builder_args,
            "env": BUILDER_ENV,
            "working_dir": BUILD_DIR,
            "user": "root",
        },
    )
    assert [e["line"] for e in log if e["line"].startswith("Step ")] == [
        "Step 1/4 : FROM python:3.12-slim",
        "Step 2/4 : WORKDIR /app",
        "Step 3/4 : COPY hello.py .",
        "Step 4/4 : RUN pip install nothing",
    ]
    metadata = json.loads(sandbox.get(f"{BUILD_DIR}/metadata.json").content)
    assert metadata["snapshot_format_version"] == "durable_archive_v1"
    assert metadata["rootfs_node_kind"] == "base"
    assert metadata["rootfs_disk_bytes"] == ROOTFS_BYTES

    complete = api.post(
        f"/platform/v1/sandbox-template-builds/{prepared['buildId']}/complete",
        json=complete_body(metadata),
    )
    assert complete.status_code == 200, complete.text
    template = complete.json()
    assert api.delete(f"/v1/namespaces/default/sandboxes/{sandbox_id}").status_code == 200

    assert template["name"] == "hello"
    assert template["id"].startswith("tmpl-")
    blob = admin.blob(template["snapshotUri"])
    assert len(blob) == template["snapshotSizeBytes"]
    with tarfile.open(fileobj=io.BytesIO(blob)) as snapshot:
        assert sorted(snapshot.getnames()) == [
            "context/Dockerfile",
            "context/hello.py",
            "spec.json",
        ]
    assert len(admin.requests()) == OFFICIAL_REQUEST_COUNT
    assert api.get("/platform/v1/sandbox-templates/by-name/hello").json() == template
    statuses = [s["status"] for s in admin.sandboxes()]
    assert statuses == ["terminated"]
