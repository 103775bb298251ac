"""Durable builds in a test: crash one in this process at a chosen point, plant a leaked sandbox,
read everything a store holds."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kiln import Build
from kiln.builds import start_state
from kiln.durable import Session
from kiln.machine import BuildOptions, BuildState
from kiln.plan import plan_dockerfile
from kiln.store import DEFAULT_SCHEMA_VERSION, Owner, Store
from kiln.testing import TEST_TOKEN, EmulatorClient
from support.paths import HELLO

# Tests poll the store faster than production so that they run in milliseconds, not seconds.
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
    return start_state(state, {"api_key": TEST_TOKEN, "on_event": on_event}, session)


async def crash_in(store: Store, api_url: str, crash_when: Callable[[BuildState], bool]) -> str:
    """Run a build until ``crash_when`` holds after a state write; return its id."""
    session = CrashingSession(store, crash_when, owner=dead_owner(), poll_s=FAST_POLL_S)
    build = start(store, api_url, session)
    try:
        await build.result()
    except Crash:
        return build.state.id
    raise AssertionError("the build ended before the crash point")


async def raw_store_text(store_url: str) -> str:
    """Everything the store holds, as raw text: the database files, or every row of every table."""
    if store_url.startswith("sqlite:///"):
        path = Path(store_url.removeprefix("sqlite:///"))
        files = [f for f in path.parent.iterdir() if f.name.startswith(path.name)]
        return "".join(f.read_bytes().decode("latin-1") for f in files)
    import psycopg

    async with await psycopg.AsyncConnection.connect(store_url) as conn:
        tables = await conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        dump: list[str] = []
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


async def rewrite_record(
    store: Store,
    build_id: str,
    changes: dict[str, object],
    *,
    schema_version: int = DEFAULT_SCHEMA_VERSION,
) -> None:
    """Overwrite a stopped build's persisted data with ``changes`` (and its schema version): a
    record another kiln wrote, or one damaged on disk."""
    record = await store.get(build_id)
    assert record is not None
    await store.save(
        build_id,
        expected_version=record.version,
        state=record.state,
        data={**record.data, **changes},
        sandbox_id=None,
        final=False,
        schema_version=schema_version,
    )
