"""What `kiln build` prints for programs: --json (--progress json) ends every outcome with one
result object on stdout, usage errors included; -q prints only the template id; --iidfile."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kiln.machine import load_machine_spec
from kiln.testing import TEST_TOKEN, EmulatorClient
from support.events import check_event
from support.paths import HELLO
from support.processes import kiln_env, run_kiln

# A builder exit status the emulator's builder stand-in fails with.
BAD_EXIT_CODE = 3
FINALS = load_machine_spec().finals


def _only_result(stdout: str) -> dict[str, Any]:
    [line] = stdout.splitlines()
    result = check_event(json.loads(line))
    assert result["type"] == "result"
    return result


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--cpus", "-1", "--json"], "--cpus: expected a number above 0"),
        (["--no-such-flag", "--json"], "unrecognized arguments: --no-such-flag"),
        (["--progress=json", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--progress", "json", "--cpus", "x"], "--cpus: expected a number"),
    ],
)
def test_a_usage_error_with_json_output_ends_with_a_result_object(
    tmp_path: Path, args: list[str], says: str
) -> None:
    run = run_kiln(["build", str(HELLO), *args], kiln_env(tmp_path))
    assert run.returncode == 2
    assert says in run.stderr, "people still read the error on stderr"
    result = _only_result(run.stdout)
    assert result["state"] is None and result["template"] is None
    assert says in result["error"]
    assert result["hint"] == "kiln build --help shows the usage"


def test_a_dockerfile_error_with_json_output_ends_with_a_result_object(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM python:3.12 AS\n")
    run = run_kiln(["build", str(dockerfile), "--json"], kiln_env(tmp_path))
    assert run.returncode == 2
    result = _only_result(run.stdout)
    assert result["state"] is None
    assert "FROM ... AS must include a stage name" in result["error"]


def test_a_usage_error_without_json_prints_nothing_on_stdout(tmp_path: Path) -> None:
    run = run_kiln(["build", str(HELLO), "--cpus", "-1"], kiln_env(tmp_path))
    assert run.returncode == 2
    assert run.stdout == ""


def test_quiet_prints_exactly_the_template_id_and_iidfile_holds_it(tmp_path: Path) -> None:
    iidfile = tmp_path / "iid"
    iidfile.write_text("left by an earlier build")
    run = run_kiln(["build", "-q", "--iidfile", str(iidfile), str(HELLO)], kiln_env(tmp_path))
    assert run.returncode == 0, run.stderr
    template_id = run.stdout.removesuffix("\n")
    assert run.stdout == f"{template_id}\n" and template_id.startswith("tmpl-")
    assert run.stderr == ""
    # As docker build writes the image id: the id alone, no newline.
    assert iidfile.read_text() == template_id


def test_a_failed_quiet_build_says_why_on_stderr_and_removes_the_iidfile(
    tmp_path: Path, emulator: EmulatorClient
) -> None:
    emulator.set_builder(exit_code=BAD_EXIT_CODE)
    iidfile = tmp_path / "iid"
    iidfile.write_text("tmpl-from-an-earlier-build")
    env = kiln_env(tmp_path, token=TEST_TOKEN)
    run = run_kiln(
        ["build", "-q", "--iidfile", str(iidfile), "--api-url", emulator.url, str(HELLO)], env
    )
    assert run.returncode == 1
    assert run.stdout == ""
    assert f"exit code {BAD_EXIT_CODE}" in run.stderr
    assert "  | Step 1/7 : FROM python:3.12-slim" in run.stderr, "the log held back is shown"
    assert not iidfile.exists()


@pytest.mark.parametrize("mode", ["plain", "json", "tty"])
def test_quiet_refuses_another_progress_mode(tmp_path: Path, mode: str) -> None:
    run = run_kiln(["build", "-q", "--progress", mode, str(HELLO)], kiln_env(tmp_path))
    assert run.returncode == 2
    assert f"--quiet and --progress {mode} cannot be used together" in run.stderr


def test_progress_tty_needs_a_terminal(tmp_path: Path) -> None:
    run = run_kiln(["build", "--progress", "tty", str(HELLO)], kiln_env(tmp_path))
    assert run.returncode == 2
    assert "--progress tty: standard error is not a terminal" in run.stderr


def test_progress_json_is_json(tmp_path: Path) -> None:
    run = run_kiln(["build", "--progress", "json", str(HELLO)], kiln_env(tmp_path))
    assert run.returncode == 0, run.stderr
    lines = [check_event(json.loads(line)) for line in run.stdout.splitlines()]
    assert lines[-1]["type"] == "result" and lines[-1]["state"] == "done"


@pytest.mark.parametrize("json_flag", [["--json"], ["--progress", "json"]])
def test_a_detached_build_with_json_output_ends_with_a_result_object(
    tmp_path: Path, emulator: EmulatorClient, json_flag: list[str]
) -> None:
    emulator.set_builder(duration_ms=3000)
    env = kiln_env(tmp_path, token=TEST_TOKEN)
    args = ["build", "--cas", "--detach", *json_flag, "--api-url", emulator.url, str(HELLO)]
    run = run_kiln(args, env)
    assert run.returncode == 0, run.stderr
    lines = [check_event(json.loads(line)) for line in run.stdout.splitlines()]
    result = lines[-1]
    assert result["type"] == "result" and result["detached"] is True
    assert result["state"] not in FINALS and result["template"] is None
    assert [line["type"] for line in lines].count("result") == 1
