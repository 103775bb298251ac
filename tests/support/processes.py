"""Running `kiln` as a real process, as the user runs it: its environment, a run to its end
(blocking or on the loop), a run whose output is read as it arrives, a closed pipe for stdout."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from kiln.testing import TEST_TOKEN, EmulatorClient
from support.events import check_event
from support.paths import HELLO, REPO
from support.polling import wait_until_blocking

# Shared by every `kiln` subprocess of every test run on this machine, outside the source tree:
# compiling kiln again in each subprocess would cost more than the build under test. Python keeps
# the cache consistent.
PYCACHE = Path(tempfile.gettempdir()) / "kiln-test-pycache"
# Each `kiln` process must end within this; a hung one fails the test instead of hanging CI.
PROCESS_TIMEOUT_S = 90.0
# How `kiln build` names its build on stderr, before anything else.
BUILD_ID = re.compile(r"Build ([0-9a-f]{32})")


def kiln_env(
    tmp_path: Path, *, store_url: str | None = None, token: str | None = None, **extra: str
) -> dict[str, str]:
    """The environment of a `kiln` process: nothing ``KILN_*`` or ``TENSORLAKE_*`` from the
    caller's, a private state directory under ``tmp_path`` (where the default store and the
    embedded emulator live), ``store_url`` as ``KILN_STORE`` and ``token`` as the Tensorlake
    credentials if given (none otherwise), and ``extra`` on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KILN_", "TENSORLAKE_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(XDG_STATE_HOME=str(tmp_path / "state"), PYTHONPYCACHEPREFIX=str(PYCACHE))
    if store_url is not None:
        env["KILN_STORE"] = store_url
    if token is not None:
        env["TENSORLAKE_API_KEY"] = token
    env.update(extra)
    return env


def kiln_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "kiln", *args]


def run_kiln(
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    timeout_s: float = PROCESS_TIMEOUT_S,
    **kwargs: Any,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m kiln ARGS` to its end (stdout and stderr captured unless redirected)."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("cwd", REPO)
    return subprocess.run(
        kiln_argv(*args),
        env=dict(env),
        stderr=subprocess.PIPE,
        text=True,
        timeout=timeout_s,
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


async def spawn_kiln(args: Sequence[str], env: Mapping[str, str]) -> asyncio.subprocess.Process:
    """Start `python -m kiln ARGS` from a test on the loop, its output piped."""
    return await asyncio.create_subprocess_exec(
        *kiln_argv(*args),
        env=dict(env),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def run_kiln_async(args: Sequence[str], env: Mapping[str, str]) -> tuple[int, str, str]:
    """Run `python -m kiln ARGS` to its end without blocking the loop: exit code, out, err."""
    process = await spawn_kiln(args, env)
    async with asyncio.timeout(PROCESS_TIMEOUT_S):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def build_id_of(process: asyncio.subprocess.Process) -> str:
    """Read the running `kiln build`'s stderr up to the line naming the build id."""
    assert process.stderr is not None
    async with asyncio.timeout(30):
        while line := await process.stderr.readline():
            if found := BUILD_ID.search(line.decode()):
                return found.group(1)
    raise AssertionError("`kiln build` ended without printing its build id")


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
        return [check_event(json.loads(line)) for line in list(self.stdout)]

    def wait_for_event(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first JSON line on stdout for which ``predicate`` holds."""

        def seen() -> dict[str, Any] | None:
            assert self.process.poll() is None, f"kiln ended early: {self.stdout} {self.stderr}"
            return next((event for event in self.json_events() if predicate(event)), None)

        return wait_until_blocking(seen)

    def interrupt(self) -> None:
        """Ctrl-C."""
        self.process.send_signal(signal.SIGINT)

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


@contextlib.contextmanager
def slow_build(emulator: EmulatorClient, tmp_path: Path, builder_ms: int) -> Iterator[Running]:
    """A `kiln build --json` of the hello example against ``emulator``, whose builder runs
    ``builder_ms`` so that a signal lands while it does; killed on exit if still running."""
    emulator.set_builder(duration_ms=builder_ms)
    args = ["build", str(HELLO), "--api-url", emulator.url, "--json"]
    running = Running(args, kiln_env(tmp_path, token=TEST_TOKEN))
    try:
        yield running
    finally:
        running.kill()


def _collect(stream: Any, sink: list[str]) -> None:
    for line in stream:
        sink.append(line)


def entered(state: str) -> Callable[[dict[str, Any]], bool]:
    """A predicate for :meth:`Running.wait_for_event`: the transition into ``state``."""
    return lambda event: event["type"] == "transition" and event["dest"] == state
