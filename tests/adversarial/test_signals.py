"""Signals to a running `kiln build`: SIGTERM and SIGHUP cancel it as the first Ctrl-C does (the
builder sandbox is deleted) and exit 143 and 129; a Ctrl-C before the build exists exits 130
without a traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import kiln.cli
from kiln.testing import EmulatorClient
from support import processes
from support.paths import HELLO
from support.polling import wait_until_blocking
from support.processes import Running, entered, kiln_env

# Long enough that the builder is still running when the signal arrives, whatever the load.
SLOW_BUILDER_MS = 60_000
SLOW_DELETE_MS = 30_000


@pytest.fixture
def slow_build(tmp_path: Path, kiln_emulator: EmulatorClient) -> Iterator[Running]:
    """A `kiln build --json` against the emulator, its builder slow enough to be interrupted."""
    with processes.slow_build(kiln_emulator, tmp_path, SLOW_BUILDER_MS) as running:
        yield running


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_cancel_the_build_and_delete_its_sandbox(
    slow_build: Running, kiln_emulator: EmulatorClient, signum: signal.Signals, code: int
) -> None:
    slow_build.wait_for_event(entered("run_builder"))
    slow_build.process.send_signal(signum)
    exit_code, err = slow_build.finish()
    assert "Traceback" not in err
    assert exit_code == code
    result = json.loads(slow_build.stdout[-1])
    assert result["type"] == "result" and result["state"] == "cancelled"
    assert [s["sandbox_id"] for s in kiln_emulator.sandboxes()] == [result["sandbox_id"]]
    assert kiln_emulator.live_sandboxes() == []


def test_a_second_sigterm_aborts_cleanup_and_names_the_sandbox(
    slow_build: Running, kiln_emulator: EmulatorClient
) -> None:
    kiln_emulator.add_fault(
        {"delay_ms": SLOW_DELETE_MS}, method="DELETE", path="/sandboxes/", times=None
    )
    slow_build.wait_for_event(entered("run_builder"))
    slow_build.process.send_signal(signal.SIGTERM)
    slow_build.wait_for_event(entered("cleanup"))
    slow_build.process.send_signal(signal.SIGTERM)
    exit_code, err = slow_build.finish()
    assert "Traceback" not in err
    assert exit_code == 143
    result = json.loads(slow_build.stdout[-1])
    assert result["state"] == "aborted"
    assert f"kiln resume {result['id']}" in result["hint"]


# Stands for a slow import: says it started, then waits to be interrupted.
SLOW_IMPORT = """
import pathlib, time
pathlib.Path({marker!r}).touch()
time.sleep(600)
"""


def test_ctrl_c_while_kiln_starts_exits_130_without_a_traceback(tmp_path: Path) -> None:
    """Ctrl-C while kiln is still loading its modules (httpx, shadowed here by a module that
    blocks), before any build exists: exit 130, one line, no traceback."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    marker = tmp_path / "importing"
    (shadow / "httpx.py").write_text(SLOW_IMPORT.format(marker=str(marker)))
    path = os.pathsep.join(filter(None, [str(shadow), os.environ.get("PYTHONPATH")]))
    running = Running(["build", str(HELLO)], kiln_env(tmp_path, PYTHONPATH=path))
    try:
        wait_until_blocking(marker.exists)
        running.process.send_signal(signal.SIGINT)
        exit_code, err = running.finish()
    finally:
        running.kill()
    assert exit_code == 130, err
    assert err == "kiln: interrupted\n"


def test_ctrl_c_while_kiln_loads_its_modules_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Loading the commands' modules is the first thing kiln does; Ctrl-C there is handled too
    (`import kiln.cli` itself loads almost nothing, so the window before main() is tiny)."""

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(kiln.cli, "build_parser", interrupted)
    assert kiln.cli.main(["build"]) == 130
    assert capsys.readouterr().err == "kiln: interrupted\n"


def test_importing_the_cli_does_not_load_the_library() -> None:
    """What `kiln` runs before main() can handle a Ctrl-C: a new interpreter imports kiln.cli
    and finds none of the heavy modules loaded."""
    probe = (
        "import sys, kiln.cli; "
        "print(sorted(m for m in ('httpx', 'kiln.machine', 'kiln.builds') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
