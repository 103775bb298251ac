"""Running `kiln` as a real process for the adversarial tests: its environment, a closed pipe
for its stdout, and polling with a deadline (never a sleep standing in for a wait)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "examples" / "hello" / "Dockerfile"
# Shared by every `kiln` subprocess of a test run; Python keeps the bytecode cache consistent.
PYCACHE = Path(tempfile.gettempdir()) / "kiln-test-pycache"
TOKEN = "kiln-adversarial-test-token-3b9d"
# Each `kiln` process must end within this; a hung one fails the test instead of hanging CI.
PROCESS_TIMEOUT_S = 90.0
POLL_S = 0.02

T = TypeVar("T")


def kiln_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A private state dir and store, no credentials (unless given), cached bytecode."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KILN_", "TENSORLAKE_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(
        XDG_STATE_HOME=str(tmp_path / "state"),
        KILN_STORE=f"sqlite:///{tmp_path / 'builds.db'}",
        PYTHONPYCACHEPREFIX=str(PYCACHE),
    )
    env.update(extra)
    return env


def kiln_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "kiln", *args]


def run_kiln(
    args: Sequence[str], env: Mapping[str, str], **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run `python -m kiln ARGS` to its end (stdout and stderr captured unless redirected)."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    return subprocess.run(
        kiln_argv(*args),
        env=dict(env),
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        timeout=PROCESS_TIMEOUT_S,
        check=False,
        **kwargs,
    )


def run_into_closed_pipe(
    args: Sequence[str], env: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run kiln with stdout a pipe whose reader has already gone (`kiln ... | head -0`): the
    first write fails, whatever the timing."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return run_kiln(args, env, stdout=write_end)
    finally:
        os.close(write_end)


def wait_for(predicate: Callable[[], T | None], *, timeout_s: float = 60.0) -> T:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(POLL_S)


class Running:
    """A `kiln` process whose stdout and stderr lines are collected as they arrive."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str]) -> None:
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.process = subprocess.Popen(
            kiln_argv(*args),
            env=dict(env),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # One reader per pipe: neither may fill up and stall the process.
        self._readers = [
            threading.Thread(target=_collect, args=(stream, sink), daemon=True)
            for stream, sink in (
                (self.process.stdout, self.stdout),
                (self.process.stderr, self.stderr),
            )
        ]
        for reader in self._readers:
            reader.start()

    def json_events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.stdout)]

    def wait_for_event(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first JSON line on stdout for which ``predicate`` holds."""

        def seen() -> dict[str, Any] | None:
            assert self.process.poll() is None, f"kiln ended early: {self.stdout} {self.stderr}"
            return next((event for event in self.json_events() if predicate(event)), None)

        return wait_for(seen)

    def finish(self) -> tuple[int, str]:
        """Exit code and stderr, once the process ended and both pipes are read to their end."""
        code = self.process.wait(PROCESS_TIMEOUT_S)
        for reader in self._readers:
            reader.join(PROCESS_TIMEOUT_S)
        return code, "".join(self.stderr)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(PROCESS_TIMEOUT_S)


def _collect(stream: Any, sink: list[str]) -> None:
    for line in stream:
        sink.append(line)


def entered(state: str) -> Callable[[dict[str, Any]], bool]:
    return lambda event: event["event"] == "transition" and event["dest"] == state
