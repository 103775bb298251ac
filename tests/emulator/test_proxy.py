"""The proxy API and the virtual sandbox behind it: processes, files, permissions, tar."""

from __future__ import annotations

import io
import tarfile

import httpx
import pytest

from kiln.emulator import Emulator
from kiln.testing import EmulatorClient
from support.wire import (
    BUILD_DIR,
    SANDBOXES,
    SandboxDriver,
    prepare,
    run_builder,
    sse_events,
    stage_build,
    tar_gz,
)


@pytest.mark.parametrize(
    "path", ["/../../etc/x", "/tmp/../../etc/passwd", "relative/x", "/tmp/a/../../../x"]
)
def test_file_api_refuses_path_traversal(
    sandbox: SandboxDriver, emulator: Emulator, path: str
) -> None:
    response = sandbox.put(path, b"pwned")
    assert response.status_code == 400
    assert response.json()["code"] == "INVALID"
    assert not any(p.name == "x" for p in emulator.data_dir.rglob("x"))


def test_root_made_directory_is_not_writable_by_the_file_api(sandbox: SandboxDriver) -> None:
    info, _ = sandbox.run("mkdir", "-p", BUILD_DIR, root=True)
    assert info["exit_code"] == 0
    refused = sandbox.put(f"{BUILD_DIR}/context.tar.gz", b"data")
    assert refused.status_code == 403
    assert "Permission denied" in refused.json()["error"]
    info, _ = sandbox.run("chmod", "0777", BUILD_DIR, root=True)
    assert info["exit_code"] == 0
    assert sandbox.put(f"{BUILD_DIR}/context.tar.gz", b"data").status_code == 200
    assert sandbox.get(f"{BUILD_DIR}/context.tar.gz").content == b"data"


def test_sandbox_user_cannot_mkdir_under_root_owned_directory(sandbox: SandboxDriver) -> None:
    info, lines = sandbox.run("mkdir", "-p", f"{BUILD_DIR}/x")
    assert info["exit_code"] == 1
    assert "Permission denied" in lines[0]["line"]
    assert lines[0]["stream"] == "stderr"


def test_unknown_command_exits_127(sandbox: SandboxDriver) -> None:
    info, lines = sandbox.run("ls", "-la")
    assert (info["status"], info["exit_code"]) == ("exited", 127)
    assert lines == [
        {"line": "ls: command not found", "timestamp": lines[0]["timestamp"], "stream": "stderr"}
    ]


def test_true_exits_zero_and_info_has_the_contract_fields(sandbox: SandboxDriver) -> None:
    info, lines = sandbox.run("/bin/true")
    assert lines == []
    assert info["status"] == "exited"
    assert info["exit_code"] == 0
    assert info["stdin_writable"] is False
    assert "managed" not in info
    assert {"pid", "command", "args", "started_at", "ended_at", "signal", "oom_killed"} <= set(info)


def test_pids_increase_per_sandbox(sandbox: SandboxDriver) -> None:
    pids = [sandbox.start("true")["pid"] for _ in range(3)]
    assert pids == [1, 2, 3]
    listed = sandbox.request("GET", "/api/v1/processes").json()["processes"]
    assert [p["pid"] for p in listed] == pids


def test_every_follow_replays_from_the_start(sandbox: SandboxDriver) -> None:
    pid = sandbox.start("tar", "-xzf", "/nope.tgz", "-C", "/tmp")["pid"]
    first = sandbox.follow(pid)
    second = sandbox.follow(pid)
    assert first == second
    assert first and "No such file" in first[0]["line"]


def test_run_streams_started_output_and_exited(sandbox: SandboxDriver) -> None:
    body = {"command": "/bin/sh", "args": ["-lc", "dmesg 2>/dev/null || true"], "user": "root"}
    response = sandbox.request("POST", "/api/v1/processes/run", json={**body, "timeout": 5})
    assert response.status_code == 200
    events = sse_events(response.text)
    assert set(events[0]) == {"pid", "started_at"}
    assert all("timestamp" in e and e["stream"] == "stdout" for e in events[1:-1])
    assert any("Linux version" in e["line"] for e in events[1:-1])
    assert events[-1] == {"exit_code": 0, "signal": None, "oom_killed": False}


@pytest.mark.parametrize("script", ["rm -rf / | true", "echo $HOME", "true; true", "a || b"])
def test_a_shell_script_beyond_and_lists_is_refused(sandbox: SandboxDriver, script: str) -> None:
    info, lines = sandbox.run("sh", "-c", script)
    assert info["exit_code"] == 2
    assert "syntax not understood" in lines[0]["line"]


def test_the_shell_runs_an_and_list_of_builtins_in_order(sandbox: SandboxDriver) -> None:
    assert sandbox.put("/tmp/sh-input", b"line 1\nline 2\n").status_code == 200
    script = "echo start && mkdir -p /tmp/sh-made && echo 'two  words' && cat /tmp/sh-input"
    info, lines = sandbox.run("/bin/sh", "-c", script)
    assert info["exit_code"] == 0
    assert [line["line"] for line in lines] == ["start", "two  words", "line 1", "line 2"]
    assert sandbox.put("/tmp/sh-made/f", b"x").status_code == 200


def test_the_shell_stops_at_the_first_failure_with_its_status(sandbox: SandboxDriver) -> None:
    script = "echo before && tar -xzf /tmp/sh-missing.tar.gz -C /tmp && echo never"
    info, lines = sandbox.run("/bin/sh", "-c", script)
    assert info["exit_code"] == 1
    assert [line["line"] for line in lines if line["stream"] == "stdout"] == ["before"]


def _upload_and_extract(sandbox: SandboxDriver, archive: bytes) -> tuple[dict, list[dict]]:
    assert sandbox.put("/tmp/in.tar.gz", archive).status_code == 200
    sandbox.run("mkdir", "-p", "/tmp/out")
    return sandbox.run("tar", "-xzf", "/tmp/in.tar.gz", "-C", "/tmp/out")


def test_tar_extracts_regular_files(sandbox: SandboxDriver) -> None:
    info, _ = _upload_and_extract(sandbox, tar_gz({"a.txt": b"A", "sub/b.txt": b"B"}))
    assert info["exit_code"] == 0
    assert sandbox.get("/tmp/out/a.txt").content == b"A"
    assert sandbox.get("/tmp/out/sub/b.txt").content == b"B"


def test_tar_skips_dotdot_members_and_strips_absolute_ones(
    sandbox: SandboxDriver, emulator: Emulator
) -> None:
    archive = tar_gz({"../escape.txt": b"x", "/abs.txt": b"y", "ok.txt": b"z"})
    info, lines = _upload_and_extract(sandbox, archive)
    assert info["exit_code"] == 2
    assert any("contains '..'" in line["line"] for line in lines)
    assert sandbox.get("/tmp/out/abs.txt").content == b"y"
    assert sandbox.get("/tmp/escape.txt").status_code == 404
    assert list(emulator.data_dir.rglob("escape.txt")) == []


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _archive(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def test_tar_extracts_symlinks_and_hard_links_inside_the_sandbox(
    sandbox: SandboxDriver, emulator: Emulator
) -> None:
    archive = _archive(
        (tarfile.TarInfo("real.txt"), b"content"),
        (_link("alias.txt", "real.txt"), None),
        (_link("passwd", "/etc/passwd"), None),
        (_link("up", "../../../../../../etc/hostname"), None),
        (_link("hard.txt", "real.txt", tarfile.LNKTYPE), None),
    )
    info, lines = _upload_and_extract(sandbox, archive)
    assert info["exit_code"] == 0, lines
    assert lines == []
    # Reads resolve links inside the sandbox's own tree, never the host's.
    assert sandbox.get("/tmp/out/alias.txt").content == b"content"
    assert sandbox.get("/tmp/out/hard.txt").content == b"content"
    assert sandbox.get("/tmp/out/passwd").status_code == 404
    assert sandbox.get("/tmp/out/up").status_code == 404
    # No host symlink anywhere under the data directory.
    assert [p for p in emulator.data_dir.rglob("*") if p.is_symlink()] == []


def test_tar_link_errors_are_gnu_tars(sandbox: SandboxDriver) -> None:
    archive = _archive(
        (_link("orphan", "missing.txt", tarfile.LNKTYPE), None),
        (_link("escape", "../outside", tarfile.LNKTYPE), None),
        (tarfile.TarInfo("/abs.txt"), b"y"),
    )
    info, lines = _upload_and_extract(sandbox, archive)
    text = [line["line"] for line in lines]
    assert info["exit_code"] == 2
    assert "tar: Removing leading `/' from member names" in text
    assert any("orphan: Cannot hard link to" in line for line in text)
    assert "tar: ../outside: Member name contains '..'" in text
    assert text[-1] == "tar: Exiting with failure status due to previous errors"
    assert all(line["stream"] == "stderr" for line in lines)


def test_process_timeout_kills(
    admin: EmulatorClient, sandbox: SandboxDriver, http: httpx.Client
) -> None:
    admin.set_builder(duration_ms=30_000)
    dockerfile = "FROM scratch\n"
    stage_build(sandbox, prepare(http, "slow", dockerfile), dockerfile, {"f": b"1"})
    info, lines = run_builder(sandbox, timeout=0.2)
    assert (info["status"], info["signal"], info["exit_code"]) == ("signaled", 9, None)
    assert "timeout" in lines[-1]["line"]


def test_file_delete_and_missing_file(sandbox: SandboxDriver) -> None:
    assert sandbox.put("/tmp/f", b"1").status_code == 200
    assert sandbox.request("DELETE", "/api/v1/files", params={"path": "/tmp/f"}).status_code == 200
    missing = sandbox.get("/tmp/f")
    assert missing.status_code == 404
    assert missing.json()["code"] == "NOT_FOUND"


def test_unknown_sandbox_is_a_proxy_error(http: httpx.Client) -> None:
    response = http.get("/api/v1/health", headers={"Host": "sbx-nope.local"})
    assert response.status_code == 502
    assert "PROXY_ERROR: Failed to proxy request: sandbox not found" in response.text


def test_deleted_sandbox_is_not_running(sandbox: SandboxDriver, http: httpx.Client) -> None:
    assert http.delete(f"{SANDBOXES}/{sandbox.id}").status_code == 200
    response = sandbox.request("GET", "/api/v1/health")
    assert response.status_code == 400
    assert f"sandbox {sandbox.id} is not running" in response.json()["error"]
    assert http.get(f"{SANDBOXES}/{sandbox.id}").json()["status"] == "terminated"


def test_sandbox_header_routes_without_host(sandbox: SandboxDriver, http: httpx.Client) -> None:
    response = http.get("/api/v1/health", headers={"X-Tensorlake-Sandbox-Id": sandbox.id})
    assert response.json() == {"healthy": True}


def test_bad_process_payload_names_the_field(sandbox: SandboxDriver) -> None:
    response = sandbox.request("POST", "/api/v1/processes", json={"args": []})
    assert response.status_code == 400
    assert "'command'" in response.json()["error"]
    response = sandbox.request("POST", "/api/v1/processes", json={"command": "true", "args": "x"})
    assert response.status_code == 400
    assert "'args'" in response.json()["error"]


def test_truncated_archive_fails_like_tar(sandbox: SandboxDriver) -> None:
    info, lines = _upload_and_extract(sandbox, tar_gz({"a.txt": b"A" * 10_000})[:40])
    assert info["exit_code"] == 2
    assert "does not look like a tar archive" in lines[-1]["line"]


def test_large_upload_round_trips(sandbox: SandboxDriver) -> None:
    # Larger than two write batches, with a tail, so every branch of the streaming write runs.
    data = bytes(range(256)) * (9 * 4096 + 7)
    assert sandbox.put("/tmp/big", data).json()["size"] == len(data)
    assert sandbox.get("/tmp/big").content == data


@pytest.mark.parametrize(
    ("argv", "code", "says"),
    [
        (["mkdir"], 2, "missing operand"),
        (["mkdir", "-x", "/tmp/a"], 2, "invalid option"),
        (["chmod", "u+w", "/tmp"], 2, "octal"),
        (["chmod", "0777"], 2, "usage"),
        (["rm", "/tmp/none"], 1, "No such file"),
        (["rm", "-q", "/tmp"], 2, "invalid option"),
        (["tar", "-cf", "/tmp/x"], 2, "unsupported flags"),
        (["mkdir", "/tmp/a/b"], 1, "No such file"),
    ],
)
def test_builtins_reject_bad_arguments_like_the_real_tools(
    sandbox: SandboxDriver, argv: list[str], code: int, says: str
) -> None:
    info, lines = sandbox.run(*argv)
    assert info["exit_code"] == code
    assert says in lines[-1]["line"]


def test_mkdir_mode_and_rm_recursive(sandbox: SandboxDriver) -> None:
    assert sandbox.run("mkdir", "-p", "-m", "0555", "/tmp/ro/inner")[0]["exit_code"] == 0
    assert sandbox.put("/tmp/ro/inner/f", b"x").status_code == 403
    assert sandbox.put("/tmp/ro/f", b"x").status_code == 200
    assert sandbox.run("rm", "-rf", "/tmp/ro", "/tmp/missing")[0]["exit_code"] == 0
    assert sandbox.get("/tmp/ro/f").status_code == 404


def test_relative_paths_resolve_against_working_dir(sandbox: SandboxDriver) -> None:
    info, _ = sandbox.run("mkdir", "made", working_dir="/tmp")
    assert info["exit_code"] == 0
    assert sandbox.put("/tmp/made/f", b"x").status_code == 200
    missing = sandbox.request(
        "POST", "/api/v1/processes", json={"command": "true", "working_dir": "/nope"}
    )
    assert missing.status_code == 400
