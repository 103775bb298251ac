"""The builder stand-in: its spec checks, its log, its snapshot, and injected failures."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import httpx
import pytest

from kiln.emulator import Emulator
from kiln.testing import EmulatorClient, run_build
from support.wire import (
    BUILD_DIR,
    SandboxDriver,
    prepare,
    run_builder,
    sse_events,
    stage_build,
)

DOCKERFILE = "FROM python:3.12-slim\n# comment\nRUN echo one \\\n  && echo two\nCOPY . /app\n"
DMESG = ["-lc", "dmesg 2>/dev/null || true"]
DF = [
    "-lc",
    f'for path in \'{BUILD_DIR}\' /var/lib/docker /; do if [ -e "$path" ]; then df -P "$path"; '
    "fi; done 2>/dev/null || true",
]


def diagnostic(sandbox: SandboxDriver, args: list[str]) -> list[str]:
    body = {"command": "/bin/sh", "args": args, "user": "root", "timeout": 5}
    events = sse_events(sandbox.request("POST", "/api/v1/processes/run", json=body).text)
    return [e["line"] for e in events if "line" in e and e.get("stream") != "stderr"]


def staged(http: httpx.Client, sandbox: SandboxDriver) -> None:
    stage_build(sandbox, prepare(http, "img", DOCKERFILE), DOCKERFILE, {"a.txt": b"A"})


def test_successful_build_logs_each_instruction_and_writes_metadata(
    admin: EmulatorClient, http: httpx.Client, sandbox: SandboxDriver
) -> None:
    staged(http, sandbox)
    info, lines = run_builder(sandbox)
    assert info["exit_code"] == 0
    steps = [e["line"] for e in lines if e["line"].startswith("Step ")]
    assert steps == [
        "Step 1/3 : FROM python:3.12-slim",
        "Step 2/3 : RUN echo one && echo two",
        "Step 3/3 : COPY . /app",
    ]
    assert "not executed" in lines[0]["line"]
    metadata = json.loads(sandbox.get(f"{BUILD_DIR}/metadata.json").content)
    snapshot = admin.blob(metadata["snapshot_uri"])
    assert metadata["snapshot_size_bytes"] == len(snapshot)
    assert metadata["rootfs_node_kind"] == "base"
    assert "parent_manifest_uri" not in metadata
    with tarfile.open(fileobj=io.BytesIO(snapshot)) as archive:
        assert sorted(archive.getnames()) == ["context/a.txt", "spec.json"]


def test_builder_must_run_as_root(http: httpx.Client, sandbox: SandboxDriver) -> None:
    staged(http, sandbox)
    info, lines = sandbox.run(
        "tl-rootfs-build", "--spec", f"{BUILD_DIR}/spec.json", "--metadata-out", "/tmp/m"
    )
    assert info["exit_code"] == 1
    assert "root" in lines[0]["line"]


@pytest.mark.parametrize(
    ("spec_change", "complaint"),
    [
        ({"dockerfile": None}, "'dockerfile'"),
        ({"contextDir": "/nowhere"}, "contextDir"),
        ({"baseImage": 5}, "'baseImage'"),
        ({"rootfsDiskBytes": "big"}, "rootfsDiskBytes"),
        ({"upload": None}, "upload"),
        ({"upload": {"kind": "single_put", "url": "http://elsewhere/x"}}, "not a URL signed"),
    ],
)
def test_builder_checks_its_spec(
    http: httpx.Client, sandbox: SandboxDriver, spec_change: dict[str, object], complaint: str
) -> None:
    staged(http, sandbox)
    spec = json.loads(sandbox.get(f"{BUILD_DIR}/spec.json").content)
    sandbox.put(f"{BUILD_DIR}/spec.json", json.dumps({**spec, **spec_change}).encode())
    info, lines = run_builder(sandbox)
    assert info["exit_code"] == 2
    assert complaint in lines[-1]["line"]


def test_injected_exit_code(
    admin: EmulatorClient, http: httpx.Client, sandbox: SandboxDriver
) -> None:
    admin.set_builder(exit_code=3)
    staged(http, sandbox)
    info, lines = run_builder(sandbox)
    assert (info["status"], info["exit_code"]) == ("exited", 3)
    assert lines[-1]["stream"] == "stderr"


def test_oom_kill_leaves_evidence_in_dmesg(
    admin: EmulatorClient, http: httpx.Client, sandbox: SandboxDriver
) -> None:
    assert not any("Out of memory" in line for line in diagnostic(sandbox, DMESG))
    admin.set_builder(oom_kill=True)
    staged(http, sandbox)
    info, _ = run_builder(sandbox)
    assert (info["status"], info["oom_killed"], info["signal"]) == ("oom_killed", True, 9)
    assert any("Out of memory: Killed process" in line for line in diagnostic(sandbox, DMESG))


def test_injected_signal_kills_without_oom_evidence(
    admin: EmulatorClient, http: httpx.Client, sandbox: SandboxDriver
) -> None:
    admin.set_builder(signal=15)
    staged(http, sandbox)
    info, _ = run_builder(sandbox)
    assert (info["status"], info["signal"], info["exit_code"]) == ("signaled", 15, None)
    assert info["oom_killed"] is False
    assert not any("Out of memory" in line for line in diagnostic(sandbox, DMESG))
    assert http.post("/_emulator/builder", json={"signal": 65}).status_code == 400


def test_enospc_shows_in_the_log_and_in_df(
    admin: EmulatorClient, http: httpx.Client, sandbox: SandboxDriver
) -> None:
    admin.set_builder(enospc=True)
    staged(http, sandbox)
    before = [line.split() for line in diagnostic(sandbox, DF) if line.startswith("/dev/")]
    assert before and all(row[4] != "100%" for row in before)
    info, lines = run_builder(sandbox)
    assert info["exit_code"] == 1
    assert "No space left on device" in lines[-1]["line"]
    rows = [line.split() for line in diagnostic(sandbox, DF) if line.startswith("/dev/")]
    assert rows and all(row[4] == "100%" for row in rows)


def test_log_lines_and_pace_are_configurable(
    admin: EmulatorClient, http: httpx.Client, sandbox: SandboxDriver
) -> None:
    admin.set_builder(log_lines=5, line_pace_ms=1)
    staged(http, sandbox)
    _, lines = run_builder(sandbox)
    assert [e["line"] for e in lines if e["line"].startswith("progress ")] == [
        f"progress {n}/5" for n in range(1, 6)
    ]


def test_builder_behaviour_is_validated(http: httpx.Client) -> None:
    unknown = http.post("/_emulator/builder", json={"explode": True})
    assert unknown.status_code == 400
    assert "explode" in unknown.json()["error"]
    negative = http.post("/_emulator/builder", json={"duration_ms": -1})
    assert negative.status_code == 400


def test_processes_introspection_shows_argv_and_user(
    admin: EmulatorClient, http: httpx.Client, sandbox: SandboxDriver
) -> None:
    staged(http, sandbox)
    run_builder(sandbox)
    processes = admin.processes()
    builder = processes[-1]
    assert builder["sandbox_id"] == sandbox.id
    assert builder["user"] == "root"
    assert builder["command"] == "/usr/local/bin/tl-rootfs-build"
    assert builder["args"][0] == "--spec"
    assert {p["user"] for p in processes} == {"root", "user"}


def test_live_follow_sees_lines_before_exit(
    admin: EmulatorClient, http: httpx.Client, sandbox: SandboxDriver
) -> None:
    admin.set_builder(line_pace_ms=100)
    staged(http, sandbox)
    pid = run_builder_start(sandbox)
    with sandbox.http.stream(
        "GET", f"/api/v1/processes/{pid}/output/follow", headers=sandbox.headers
    ) as stream:
        first = next(line for line in stream.iter_lines() if line.startswith("data:"))
        assert sandbox.info(pid)["status"] == "running"
    assert "stand-in" in first


def run_builder_start(sandbox: SandboxDriver) -> int:
    args = ("--spec", f"{BUILD_DIR}/spec.json", "--metadata-out", f"{BUILD_DIR}/metadata.json")
    pid: int = sandbox.start("tl-rootfs-build", *args, root=True)["pid"]
    return pid


def test_an_import_needs_no_context(
    admin: EmulatorClient, http: httpx.Client, sandbox: SandboxDriver
) -> None:
    prepared = prepare(http, "ubuntu", "FROM ubuntu:24.04\n")
    sandbox.run("mkdir", "-p", BUILD_DIR, root=True)
    sandbox.run("chmod", "0777", BUILD_DIR, root=True)
    spec = {
        **prepared,
        "dockerfile": "FROM ubuntu:24.04\n",
        "contextDir": f"{BUILD_DIR}/context",
        "baseImage": "ubuntu:24.04",
        "importImageReference": "ubuntu:24.04",
        "rootfsDiskBytes": 1 << 30,
    }
    sandbox.put(f"{BUILD_DIR}/spec.json", json.dumps(spec).encode())
    info, lines = run_builder(sandbox)
    assert info["exit_code"] == 0, lines
    snapshot = admin.blob(prepared["snapshotUri"])
    with tarfile.open(fileobj=io.BytesIO(snapshot)) as archive:
        assert archive.getnames() == ["spec.json"]


async def test_a_context_with_links_builds_and_its_snapshot_keeps_them(
    emulator: Emulator, tmp_path: Path
) -> None:
    # The symptom of issue 10: a symlink in the context failed every build in phase upload.
    (tmp_path / "Dockerfile").write_text("FROM python:3.12-slim\nCOPY . /app\n")
    (tmp_path / "real.txt").write_text("content")
    (tmp_path / "alias.txt").symlink_to("real.txt")
    with EmulatorClient(emulator.url) as client:
        run = await run_build(client, tmp_path / "Dockerfile")
        assert run.outcome == "done", run.state.error
        [template] = client.templates()
        blob = client.blob(template["snapshotUri"])
    with tarfile.open(fileobj=io.BytesIO(blob)) as archive:
        alias = archive.getmember("context/alias.txt")
    assert alias.issym()
    assert alias.linkname == "real.txt"
