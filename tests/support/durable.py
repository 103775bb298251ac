"""Helpers for the durable-build tests: crash a build in this process at a chosen point, run
`kiln` in a subprocess, and read what the emulator saw."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kiln import Build
from kiln.builds import start_state
from kiln.durable import Session
from kiln.machine import BuildOptions, BuildState
from kiln.plan import plan_dockerfile
from kiln.store import Owner, Store
from kiln.testing import EmulatorClient

REPO = Path(__file__).resolve().parents[2]
# Shared by every `kiln` subprocess of every test run on this machine; Python keeps it consistent.
PYCACHE = Path(tempfile.gettempdir()) / "kiln-test-pycache"
HELLO = REPO / "examples" / "hello" / "Dockerfile"
# Distinctive, so a test can search the store's files and tables for it.
TOKEN = "kiln-durable-test-token-7f3c2a91"
BUILDER_NAME = "tl-rootfs-build"
# Each `kiln` subprocess must finish within this; a hung one fails the test instead of CI.
PROCESS_TIMEOUT_S = 60.0
POLL_S = 0.02
# Tests poll faster than production so that they run in milliseconds, not seconds.
FAST_POLL_S = 0.05


class Crash(Exception):
    """Stands for the process dying: raised from the persist hook, it skips cleanup entirely."""


class CrashingSession(Session):
    """A session whose process 'dies' right after a state write for which ``crash_when`` holds."""

    def __init__(
        self, store: Store, crash_when: Callable[[BuildState], bool], **kwargs: Any
    ) -> None:
        super().__init__(store, **kwargs)
        self._crash_when = crash_when

    async def persist(self, state: BuildState) -> None:
        await super().persist(state)
        if self._crash_when(state):
            raise Crash(state.state)


def dead_owner() -> Owner:
    """An owner on this host whose process has exited: its builds are free at once."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Owner(host=socket.gethostname(), pid=int(child.stdout), worker_id="crashed")


def start(
    store: Store,
    api_url: str,
    session: Session | None = None,
    *,
    dockerfile: Path = HELLO,
    on_event: Callable[[Any], None] | None = None,
) -> Build:
    """Start a persisted hello build against the emulator at ``api_url``."""
    state = BuildState(plan=plan_dockerfile(dockerfile), options=BuildOptions(api_url=api_url))
    session = session or Session(store, poll_s=FAST_POLL_S)
    return start_state(state, {"api_key": TOKEN, "on_event": on_event}, session)


async def crash_in(store: Store, api_url: str, crash_when: Callable[[BuildState], bool]) -> str:
    """Run a build until ``crash_when`` holds after a state write; return its id."""
    session = CrashingSession(store, crash_when, owner=dead_owner(), poll_s=FAST_POLL_S)
    build = start(store, api_url, session)
    try:
        await build.result()
    except Crash:
        return build.state.id
    raise AssertionError("the build ended before the crash point")


def builder_starts(emulator: EmulatorClient, sandbox_ids: Sequence[str] | None = None) -> int:
    return sum(
        1
        for p in emulator.processes()
        if p["command"].endswith(BUILDER_NAME)
        and (sandbox_ids is None or p["sandbox_id"] in sandbox_ids)
    )


def command_runs(emulator: EmulatorClient, command: str) -> int:
    return sum(1 for p in emulator.processes() if p["command"] == command)


async def wait_until(predicate: Callable[[], Any], *, timeout_s: float = 20.0) -> Any:
    """Poll an async or plain predicate until it returns something truthy."""
    async with asyncio.timeout(timeout_s):
        while True:
            value = predicate()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            await asyncio.sleep(POLL_S)


def kiln_env(store_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a `kiln` subprocess: the test store, a private state dir, a token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KILN_", "TENSORLAKE_"))}
    # Compiling kiln again in every subprocess costs more than the build under test: cache the
    # bytecode, outside the source tree.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(
        KILN_STORE=store_url,
        XDG_STATE_HOME=str(tmp_path / "state"),
        TENSORLAKE_API_KEY=TOKEN,
        PYTHONPYCACHEPREFIX=str(PYCACHE),
        **extra,
    )
    return env


async def spawn_kiln(args: Sequence[str], env: Mapping[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kiln",
        *args,
        env=dict(env),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def run_kiln(args: Sequence[str], env: Mapping[str, str]) -> tuple[int, str, str]:
    """Run `python -m kiln ARGS` to its end: exit code, stdout, stderr."""
    process = await spawn_kiln(args, env)
    async with asyncio.timeout(PROCESS_TIMEOUT_S):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def raw_store_text(store_url: str) -> str:
    """Everything the store holds, as raw text: the database files, or every row of every table."""
    if store_url.startswith("sqlite:///"):
        path = Path(store_url.removeprefix("sqlite:///"))
        files = [f for f in path.parent.iterdir() if f.name.startswith(path.name)]
        return "".join(f.read_bytes().decode("latin-1") for f in files)
    import psycopg

    async with await psycopg.AsyncConnection.connect(store_url) as conn:
        tables = await conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        dump = []
        for (table,) in await tables.fetchall():
            rows = await conn.execute(f'SELECT t::text FROM "{table}" t')
            dump.extend(row[0] for row in await rows.fetchall())
        return "\n".join(dump)


async def leak_a_sandbox(store: Store, emulator: EmulatorClient) -> str:
    """Plant a build recorded as ended whose builder sandbox still runs."""
    build_id = await crash_in(store, emulator.url, lambda s: s.state == "cleanup")
    record = await store.get(build_id)
    assert record is not None and record.sandbox_id is not None
    await store.save(
        build_id,
        expected_version=record.version,
        state="failed",
        data={**record.data, "state": "failed", "outcome": "failed"},
        sandbox_id=record.sandbox_id,
        final=True,
        holds_sandbox=True,
    )
    return build_id
