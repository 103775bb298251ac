"""Output that goes away: a closed pipe ends kiln quietly (exit 141, as SIGPIPE would), a full
device is one error line (exit 1), never a traceback; with --json, stdout carries JSON only."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.paths import HELLO
from support.processes import kiln_env, run_into_closed_pipe, run_kiln

EXIT_BROKEN_PIPE = 141
DEV_FULL = Path("/dev/full")


@pytest.fixture(scope="module")
def queued(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], str]]:
    """An environment whose store holds one submitted build (nothing runs it), and its id."""
    env = kiln_env(tmp_path_factory.mktemp("pipes"), token="unused")
    submitted = run_kiln(["submit", str(HELLO)], env)
    assert submitted.returncode == 0, submitted.stderr
    yield env, submitted.stdout.strip()


def _quiet(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == EXIT_BROKEN_PIPE, done.stderr
    assert done.stderr == ""


@pytest.mark.parametrize(
    "command",
    [["ls"], ["ls", "--json"], ["logs", "{id}"], ["status", "{id}"], ["status", "{id}", "--json"]],
)
def test_store_commands_end_quietly_on_a_closed_pipe(
    queued: tuple[dict[str, str], str], command: list[str]
) -> None:
    env, build_id = queued
    _quiet(run_into_closed_pipe([part.format(id=build_id) for part in command], env))


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_plan_ends_quietly_on_a_closed_pipe(tmp_path: Path, json_flag: list[str]) -> None:
    _quiet(run_into_closed_pipe(["plan", str(HELLO), *json_flag], kiln_env(tmp_path)))


@pytest.mark.skipif(not DEV_FULL.exists(), reason="needs /dev/full")
@pytest.mark.parametrize("command", [["plan", str(HELLO), "--json"], ["ls"], ["status", "{id}"]])
def test_a_full_device_is_one_error_line(
    queued: tuple[dict[str, str], str], command: list[str]
) -> None:
    env, build_id = queued
    with DEV_FULL.open("w") as full:
        done = run_kiln([part.format(id=build_id) for part in command], env, stdout=full)
    assert done.returncode == 1
    assert done.stderr == "kiln: error: cannot write to standard output: No space left on device\n"


def test_plan_json_carries_fifo_and_socket_warnings_in_the_json(tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM alpine\n")
    os.mkfifo(context / "pipe")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(context / "sock"))
        done = run_kiln(["plan", str(context / "Dockerfile"), "--json"], kiln_env(tmp_path))
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)  # stdout is the JSON object and nothing else
    warnings = payload["warnings"]
    assert any("pipe" in w and "FIFO" in w for w in warnings), warnings
    assert any("sock" in w and "socket" in w for w in warnings), warnings
    assert payload["context"]["files"] == 1


def test_logs_follow_stops_on_a_build_nobody_runs(queued: tuple[dict[str, str], str]) -> None:
    env, build_id = queued
    done = run_kiln(["logs", build_id, "--follow"], env)
    assert done.returncode == 0
    assert "-- submitted" in done.stdout
    assert f"build {build_id}" in done.stderr and "nobody runs it" in done.stderr
    assert f"kiln resume {build_id}" in done.stderr
