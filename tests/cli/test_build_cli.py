"""`kiln build`, `kiln import` and `kiln diagram`, run as the user runs them: in a subprocess, with
a private state directory and no Tensorlake credentials unless a test gives some."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiln.emulator import Emulator, EmulatorConfig
from kiln.testing import TEST_TOKEN, EmulatorClient
from support import processes
from support.emulator import snapshot_files
from support.events import check_event
from support.paths import HELLO, MULTISTAGE, REPO
from support.processes import PROCESS_TIMEOUT_S, Running, entered, kiln_argv, kiln_env, run_kiln

COMMITTED_DIAGRAM = REPO / "diagrams" / "build.mmd"
EMBEDDED_NOTICE = "building against the embedded emulator"
# Long enough that a Ctrl-C always lands while the builder (or the delete) is still going.
SLOW_BUILDER_MS = 20_000
SLOW_DELETE_MS = 3_000
# Far below SLOW_DELETE_MS: exiting this fast proves the second Ctrl-C did not wait for it.
ABORT_EXIT_S = 1.5
ANSI_ESCAPE = "\x1b["
ANSI_SEQUENCE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
TERMINAL_COLUMNS = 120
TERMINAL_READ_BYTES = 65536
RECORDED_EMBEDDED = "Build {id} (kiln status {id} / kiln logs {id} show it later)"
RECORDED_REMOTE = "Build {id} (continue it after a crash: kiln resume {id})"
BAD_EXIT_CODE = 3


def json_lines(stdout: str) -> list[dict[str, Any]]:
    """Every stdout line parsed and checked against the published event schema."""
    return [check_event(json.loads(line)) for line in stdout.splitlines()]


def result_of(stdout: str) -> dict[str, Any]:
    last = json_lines(stdout)[-1]
    assert last["type"] == "result"
    return last


def templates_file(tmp_path: Path) -> dict[str, Any]:
    """What the embedded emulator persisted: templates by name."""
    path = tmp_path / "state" / "kiln" / "emulator" / "templates.json"
    return json.loads(path.read_text())  # type: ignore[no-any-return]


# -- the embedded emulator ------------------------------------------------------------------------


def test_build_hello_then_a_child_from_it_as_a_diff_build(tmp_path: Path) -> None:
    env = kiln_env(tmp_path)
    first = run_kiln(["build", str(HELLO)], env)
    assert first.returncode == 0, first.stderr
    notices = [line for line in first.stderr.splitlines() if EMBEDDED_NOTICE in line]
    assert len(notices) == 1
    assert first.stdout == ""  # the plain view writes to stderr
    hello = templates_file(tmp_path)["hello"]
    assert hello["rootfsNodeKind"] == "base"

    child_dir = tmp_path / "child"
    child_dir.mkdir()
    (child_dir / "Dockerfile").write_text("FROM hello\nRUN echo child\n")
    child = run_kiln(["build", str(child_dir / "Dockerfile"), "--name", "child", "--json"], env)
    assert child.returncode == 0, child.stderr
    result = result_of(child.stdout)
    assert result["state"] == "done"
    template = templates_file(tmp_path)["child"]
    assert template["id"] == result["template"]["id"]
    assert template["rootfsNodeKind"] == "diff"
    assert template["parentManifestUri"] == hello["snapshotUri"]
    statuses = [e["message"] for e in json_lines(child.stdout) if e["type"] == "status"]
    assert "Build mode: RootfsDiff" in statuses


def test_build_multistage(tmp_path: Path) -> None:
    done = run_kiln(["build", str(MULTISTAGE), "--json"], kiln_env(tmp_path))
    assert done.returncode == 0, done.stderr
    result = result_of(done.stdout)
    assert (result["state"], result["name"]) == ("done", "multistage")
    assert "multistage" in templates_file(tmp_path)


def test_import_a_registry_image(tmp_path: Path) -> None:
    done = run_kiln(["import", "python:3.12-slim", "--json"], kiln_env(tmp_path))
    assert done.returncode == 0, done.stderr
    result = result_of(done.stdout)
    assert result["state"] == "done"
    assert templates_file(tmp_path)[result["name"]]["id"] == result["template"]["id"]


def test_json_stdout_holds_only_json_lines_ending_with_the_result(tmp_path: Path) -> None:
    done = run_kiln(["build", str(HELLO), "--json"], kiln_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert ANSI_ESCAPE not in done.stdout
    lines = json_lines(done.stdout)
    assert lines[0]["type"] == "notice" and EMBEDDED_NOTICE in lines[0]["message"]
    # Its sandboxes end with kiln: the build can be looked at later, not resumed.
    build_id = lines[-1]["id"]
    assert lines[1]["type"] == "notice" and lines[1]["id"] == build_id
    assert lines[1]["message"] == RECORDED_EMBEDDED.format(id=build_id)
    # Every line names the build once it has started, and the platform's build once known.
    assert all(line["id"] == build_id for line in lines[1:])
    assert lines[-1]["build_id"] is not None
    known = next(i for i, line in enumerate(lines) if line["build_id"] is not None)
    assert all(line["build_id"] == lines[-1]["build_id"] for line in lines[known:])
    kinds = {line["type"] for line in lines}
    assert {"status", "transition", "build_log", "result"} <= kinds
    assert [line["type"] for line in lines].count("result") == 1
    result = lines[-1]
    assert result["state"] == "done" and result["error"] is None
    assert result["template"]["name"] == "hello"


def test_a_reader_that_stops_reading_does_not_stop_the_build(tmp_path: Path) -> None:
    """`kiln build --json | head -1`: the build still ends, registered, without a traceback."""
    process = subprocess.Popen(
        kiln_argv(*["build", str(HELLO), "--json"]),
        env=kiln_env(tmp_path),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    assert EMBEDDED_NOTICE in process.stdout.readline()
    process.stdout.close()
    err = process.stderr.read()
    assert process.wait(PROCESS_TIMEOUT_S) == 0, err
    assert "Traceback" not in err
    assert "hello" in templates_file(tmp_path)


def test_on_a_terminal_the_live_view_shows_every_phase_with_its_time(tmp_path: Path) -> None:
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        kiln_argv(*["build", str(HELLO)]),
        env=kiln_env(tmp_path, TERM="xterm", COLUMNS=str(TERMINAL_COLUMNS)),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
    )
    os.close(terminal)
    chunks: list[bytes] = []
    reader = threading.Thread(target=_drain_terminal, args=(controller, chunks), daemon=True)
    reader.start()
    assert process.wait(PROCESS_TIMEOUT_S) == 0
    reader.join(PROCESS_TIMEOUT_S)
    os.close(controller)
    screen = ANSI_SEQUENCE.sub("", b"".join(chunks).decode(errors="replace"))
    # Phases named for people, from their declared labels.
    for phase in ("checking credentials", "uploading context", "building the image"):
        assert re.search(rf"✓\s+{phase}\s+\d+\.\ds", screen), phase
    assert "proxy_ready" not in screen and "run_builder" not in screen
    # The build log scrolls by, every line of it.
    assert "| Step 1/7 : FROM python:3.12-slim" in screen
    assert re.search(r"done: image 'hello' registered as template tmpl-\S+ \(\d+\.\ds, ", screen)
    assert 'sandbox = Sandbox.create(image="hello")' in screen


def _drain_terminal(controller: int, chunks: list[bytes]) -> None:
    """Read the terminal until the process's side of it is closed (EIO on Linux)."""
    with contextlib.suppress(OSError):
        while chunk := os.read(controller, TERMINAL_READ_BYTES):
            chunks.append(chunk)


# -- errors before anything starts ----------------------------------------------------------------


def test_missing_dockerfile_exits_2_before_starting_anything(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "Dockerfile"
    run = run_kiln(["build", str(missing), "--json"], kiln_env(tmp_path))
    assert run.returncode == 2
    assert f"Dockerfile not found: {missing}" in run.stderr
    assert "hint:" in run.stderr
    # With --json, the outcome is one result object on stdout: no build was started.
    [result] = json_lines(run.stdout)
    assert result["type"] == "result" and result["state"] is None and result["id"] is None
    assert f"Dockerfile not found: {missing}" in result["error"] and result["hint"]
    assert not (tmp_path / "state" / "kiln" / "emulator").exists()


def test_malformed_dockerfile_exits_2_naming_the_line(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("# a comment\n\nFROM python:3.12 AS\nRUN true\n")
    run = run_kiln(["build", str(dockerfile)], kiln_env(tmp_path))
    assert run.returncode == 2
    assert "line 3: FROM ... AS must include a stage name" in run.stderr
    assert EMBEDDED_NOTICE not in run.stderr


def test_missing_context_exits_2(tmp_path: Path) -> None:
    run = run_kiln(["build", str(HELLO), "--context", str(tmp_path / "gone")], kiln_env(tmp_path))
    assert run.returncode == 2
    assert f"build context not found: {tmp_path / 'gone'}" in run.stderr


def test_api_url_without_credentials_exits_2_before_building(
    tmp_path: Path, emulator: EmulatorClient
) -> None:
    run = run_kiln(["build", str(HELLO), "--api-url", emulator.url], kiln_env(tmp_path))
    assert run.returncode == 2
    assert "no Tensorlake credentials were found" in run.stderr
    assert "hint: set TENSORLAKE_API_KEY" in run.stderr
    assert emulator.requests() == []


def test_malformed_api_url_exits_2(tmp_path: Path) -> None:
    run = run_kiln(
        ["import", "python:3.12-slim", "--api-url", "ftp://x"], kiln_env(tmp_path, token=TEST_TOKEN)
    )
    assert run.returncode == 2
    assert "API URL 'ftp://x' is not an absolute http(s) URL" in run.stderr


def test_an_unusable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "kiln").write_text("a file where kiln's directory belongs")
    run = run_kiln(["build", str(HELLO)], kiln_env(tmp_path))
    assert run.returncode == 1
    assert "cannot create the embedded emulator's directory" in run.stderr
    assert "Traceback" not in run.stderr


def test_bad_option_value_exits_2(tmp_path: Path) -> None:
    run = run_kiln(["build", str(HELLO), "--cpus", "-1"], kiln_env(tmp_path))
    assert run.returncode == 2
    assert "--cpus: expected a number above 0" in run.stderr


# -- against an emulator the test controls --------------------------------------------------------


def test_failing_build_exits_1_with_the_error_and_hint(
    tmp_path: Path, emulator: EmulatorClient
) -> None:
    emulator.set_builder(exit_code=BAD_EXIT_CODE)
    run = run_kiln(
        ["build", str(HELLO), "--api-url", emulator.url, "--json"],
        kiln_env(tmp_path, token=TEST_TOKEN),
    )
    assert run.returncode == 1
    result = result_of(run.stdout)
    assert result["state"] == "failed"
    assert json_lines(run.stdout)[0]["message"] == RECORDED_REMOTE.format(id=result["id"])
    assert str(BAD_EXIT_CODE) in result["error"]
    assert result["sandbox_id"] in result["error"]
    assert result["hint"] == f"the build log shows what failed: kiln logs {result['id']}"
    assert emulator.live_sandboxes() == []
    # The hint's command works: the build log is in the default store.
    logs = run_kiln(["logs", result["id"]], kiln_env(tmp_path, token=TEST_TOKEN))
    assert logs.returncode == 0, logs.stderr
    assert "Step 1/7 : FROM python:3.12-slim" in logs.stdout


def test_credentials_are_never_printed(tmp_path: Path, emulator: EmulatorClient) -> None:
    env = kiln_env(tmp_path, token=TEST_TOKEN)
    done = run_kiln(["build", str(HELLO), "--api-url", emulator.url], env)
    assert done.returncode == 0, done.stderr
    emulator.set_builder(exit_code=BAD_EXIT_CODE)
    argv = ["build", str(HELLO), "--api-url", emulator.url, "--json", "--no-cache"]
    failed = run_kiln(argv, env)
    assert failed.returncode == 1
    for run in (done, failed):
        assert TEST_TOKEN not in run.stdout
        assert TEST_TOKEN not in run.stderr


def test_refused_credentials_are_not_printed_either(tmp_path: Path) -> None:
    config = EmulatorConfig(data_dir=tmp_path / "emulator", api_key="the-only-accepted-key")
    with Emulator(config) as server:
        run = run_kiln(
            ["build", str(HELLO), "--api-url", server.url], kiln_env(tmp_path, token=TEST_TOKEN)
        )
    assert run.returncode == 1
    assert "kiln: error:" in run.stderr
    assert TEST_TOKEN not in run.stdout + run.stderr


# -- Ctrl-C ---------------------------------------------------------------------------------------


@pytest.fixture
def slow_build(tmp_path: Path, emulator: EmulatorClient) -> Iterator[Running]:
    """A `kiln build --json` whose builder runs long enough to be interrupted."""
    with processes.slow_build(emulator, tmp_path, SLOW_BUILDER_MS) as running:
        yield running


def test_ctrl_c_cancels_the_build_and_deletes_its_sandbox(
    slow_build: Running, emulator: EmulatorClient
) -> None:
    slow_build.wait_for_event(entered("run_builder"))
    slow_build.interrupt()
    code, err = slow_build.finish()
    assert "Traceback" not in err
    assert code == 130
    # Every line of a cancelled build matches the published schema too.
    result = result_of("".join(slow_build.stdout))
    assert result["state"] == "cancelled"
    sandboxes = emulator.sandboxes()
    assert [s["sandbox_id"] for s in sandboxes] == [result["sandbox_id"]]
    assert emulator.live_sandboxes() == []


def test_second_ctrl_c_aborts_cleanup_and_names_the_sandbox_left(
    slow_build: Running, emulator: EmulatorClient
) -> None:
    emulator.add_fault(
        {"delay_ms": SLOW_DELETE_MS}, method="DELETE", path="/sandboxes/", times=None
    )
    slow_build.wait_for_event(entered("run_builder"))
    slow_build.interrupt()
    slow_build.wait_for_event(entered("cleanup"))
    slow_build.interrupt()
    started = time.monotonic()
    code, err = slow_build.finish()
    assert "Traceback" not in err
    assert time.monotonic() - started < ABORT_EXIT_S
    assert code == 130
    result = json.loads(slow_build.stdout[-1])
    assert result["state"] == "aborted"
    # kiln did not wait for the delete, which the emulator has not even started yet.
    [sandbox] = emulator.live_sandboxes()
    assert f"builder sandbox {sandbox['sandbox_id']} may be left running" in result["error"]
    assert f"kiln resume {result['id']}" in result["hint"]


# -- kiln diagram ---------------------------------------------------------------------------------


def fake_graphviz(bin_dir: Path, script: str) -> None:
    bin_dir.mkdir()
    dot = bin_dir / "dot"
    dot.write_text("#!/bin/sh\n" + script)
    dot.chmod(0o755)


def test_diagram_writes_the_committed_mermaid_and_no_svg_without_graphviz(tmp_path: Path) -> None:
    out = tmp_path / "diagrams"
    # An empty PATH: no `dot`, whatever this machine has installed.
    env = kiln_env(tmp_path, PATH=str(tmp_path / "empty-bin"))
    run = run_kiln(["diagram", "--out", str(out)], env)
    assert run.returncode == 0, run.stderr
    assert (out / "build.mmd").read_text() == COMMITTED_DIAGRAM.read_text()
    assert not (out / "build.svg").exists()
    assert "Graphviz `dot` is not installed" in run.stdout


def test_diagram_renders_svg_through_graphviz_when_installed(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    # Stands for Graphviz: wraps the DOT source it is given, so the test sees what kiln sent.
    fake_graphviz(bin_dir, '[ "$1" = "-Tsvg" ] || exit 9\necho "<svg>"; cat; echo "</svg>"\n')
    out = tmp_path / "diagrams"
    env = kiln_env(tmp_path, PATH=f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    run = run_kiln(["diagram", "--out", str(out)], env)
    assert run.returncode == 0, run.stderr
    svg = (out / "build.svg").read_text()
    assert svg.startswith("<svg>\n") and "digraph build {" in svg
    assert '"run_builder" -> "cleanup" [label="cancel"];' in svg
    assert f"wrote {out / 'build.svg'}" in run.stdout


def test_diagram_reports_a_graphviz_failure(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_graphviz(bin_dir, "echo 'syntax error near line 1' >&2\nexit 1\n")
    env = kiln_env(tmp_path, PATH=str(bin_dir))
    run = run_kiln(["diagram", "--out", str(tmp_path / "diagrams")], env)
    assert run.returncode == 1
    assert "Graphviz failed" in run.stderr and "syntax error near line 1" in run.stderr
    assert "Traceback" not in run.stderr


# -- the Docker user's front door (issue 12) -------------------------------------------------------

APP_DOCKERFILE = """\
ARG PY=3.11
FROM python:${PY}-slim AS base
ARG PY
RUN echo "python $PY"
FROM base AS app
ARG GREETING=hello
COPY app.py /app/
RUN echo "$GREETING"
FROM app AS debug
RUN echo never-sent
"""


def received_dockerfile(emulator: EmulatorClient, name: str) -> str:
    """The Dockerfile the emulator's builder was given, from the spec.json in its snapshot."""
    (template,) = [t for t in emulator.templates() if t["name"] == name]
    dockerfile: str = json.loads(snapshot_files(emulator, template)["spec.json"])["dockerfile"]
    return dockerfile


@pytest.fixture
def app(tmp_path: Path) -> Path:
    project = tmp_path / "shop"
    project.mkdir()
    (project / "Dockerfile").write_text(APP_DOCKERFILE)
    (project / "app.py").write_text("print('hi')\n")
    return project


def test_build_dot_uses_the_directory_as_context_and_tag_as_name(
    tmp_path: Path, app: Path, emulator: EmulatorClient
) -> None:
    args = ["build", ".", "-t", "web", "--api-url", emulator.url, "--json"]
    done = run_kiln(args, kiln_env(tmp_path, token=TEST_TOKEN), cwd=app)
    assert done.returncode == 0, done.stderr
    assert result_of(done.stdout)["name"] == "web"
    assert received_dockerfile(emulator, "web") == APP_DOCKERFILE


def test_file_build_args_target_and_platform_are_applied_in_the_dockerfile_sent(
    tmp_path: Path, app: Path, emulator: EmulatorClient
) -> None:
    ci = tmp_path / "ci"
    ci.mkdir()
    (ci / "app.Dockerfile").write_text(APP_DOCKERFILE)
    (app / "Dockerfile").unlink()
    args = [
        *("build", "-f", "ci/app.Dockerfile", "shop", "--build-arg", "PY=3.12"),
        *("--build-arg", "GREETING", "--build-arg", "NOBODY=1", "--target", "app"),
        *("--platform", "linux/amd64", "--api-url", emulator.url, "--json"),
    ]
    env = kiln_env(tmp_path, token=TEST_TOKEN, GREETING="it's me")
    done = run_kiln(args, env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert result_of(done.stdout)["name"] == "app"
    warnings = [e["message"] for e in json_lines(done.stdout) if e["type"] == "warning"]
    assert any("build-args [NOBODY] were not consumed" in w for w in warnings)
    sent = received_dockerfile(emulator, "app").split("\n")
    assert sent[0] == "ARG PY='3.12'"
    assert sent[2] == "ARG PY='3.12'"
    assert sent[5] == "ARG GREETING='it'\"'\"'s me'"
    assert "never-sent" not in "\n".join(sent)
    assert len(sent) == 9  # eight lines up to the target stage's end, and the final newline


def test_a_dockerfile_from_stdin_builds_with_no_context(
    tmp_path: Path, emulator: EmulatorClient
) -> None:
    text = "FROM alpine:3.20\nRUN echo from-stdin\n"
    args = ["build", "-", "-t", "piped", "--api-url", emulator.url, "--json"]
    done = run_kiln(args, kiln_env(tmp_path, token=TEST_TOKEN), cwd=tmp_path, input=text)
    assert done.returncode == 0, done.stderr
    assert received_dockerfile(emulator, "piped") == text


def test_a_dockerfile_from_stdin_with_a_context_directory(
    tmp_path: Path, app: Path, emulator: EmulatorClient
) -> None:
    args = ["build", "-f", "-", str(app), "--api-url", emulator.url, "--json"]
    done = run_kiln(args, kiln_env(tmp_path, token=TEST_TOKEN), cwd=tmp_path, input=APP_DOCKERFILE)
    assert done.returncode == 0, done.stderr
    assert result_of(done.stdout)["name"] == "shop"


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["-"], "FROM alpine\nCOPY app.py /\n", 'COPY source "app.py": not found'),
        (["shop"], "", "line 7: COPY source"),  # replaced below by a Dockerfile naming a gone file
        (["shop", "--target", "tset"], None, 'target stage "tset" could not be found'),
        (["shop", "--platform", "linux/arm64"], None, "Tensorlake builders are linux/amd64"),
        (["nowhere"], None, 'unable to prepare context: path "nowhere" not found'),
        (["shop", "--bogus"], None, "usage: kiln build"),
    ],
)
def test_front_door_mistakes_exit_2_before_any_request(
    tmp_path: Path,
    app: Path,
    emulator: EmulatorClient,
    args: list[str],
    stdin: str | None,
    message: str,
) -> None:
    if stdin == "":
        (app / "app.py").unlink()
        stdin = None
    run = run_kiln(
        ["build", *args, "--api-url", emulator.url],
        kiln_env(tmp_path, token=TEST_TOKEN),
        cwd=tmp_path,
        input=stdin,
    )
    assert run.returncode == 2, run.stderr
    assert message in run.stderr
    assert "Traceback" not in run.stderr
    assert emulator.requests() == []


@pytest.mark.parametrize(
    ("dockerfile", "message"),
    [
        ("FROM alpine\nRUNN echo hi\n", "line 2: unknown instruction: RUNN (did you mean RUN?)"),
        ("FROM alpine\nCOPY --frm=x a b\n", "line 2: unknown flag: --frm (did you mean from?)"),
    ],
)
def test_what_buildkit_refuses_exits_2_before_any_request(
    tmp_path: Path, emulator: EmulatorClient, dockerfile: str, message: str
) -> None:
    (tmp_path / "Dockerfile").write_text(dockerfile)
    run = run_kiln(
        ["build", ".", "--api-url", emulator.url],
        kiln_env(tmp_path, token=TEST_TOKEN),
        cwd=tmp_path,
    )
    assert run.returncode == 2
    assert message in run.stderr
    assert emulator.requests() == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["import", "Ubuntu:24.04"], "invalid image reference 'Ubuntu:24.04'"),
        (["import", "ubuntu", "--name", "a/b"], "image name 'a/b'"),
    ],
)
def test_import_reference_and_name_are_checked_before_any_request(
    tmp_path: Path, emulator: EmulatorClient, args: list[str], message: str
) -> None:
    run = run_kiln(
        [*args, "--api-url", emulator.url], kiln_env(tmp_path, token=TEST_TOKEN), cwd=tmp_path
    )
    assert run.returncode == 2
    assert message in run.stderr
    assert emulator.requests() == []


def test_build_help_lists_every_flag_with_its_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from kiln.cli import main

    with pytest.raises(SystemExit):
        main(["build", "--help"])
    text = capsys.readouterr().out
    options = text.split("options:")[1].split("coming from docker build:")[0]
    blocks = re.split(r"\n  (?=-)", options)[1:]
    flags = [block.split()[0] for block in blocks]
    for flag in ("-f", "-t", "--build-arg", "--target", "--platform", "--context", "--name"):
        assert flag in flags
    for block in blocks:
        if block.startswith("-h"):
            continue
        assert "(default:" in " ".join(block.split()), block
