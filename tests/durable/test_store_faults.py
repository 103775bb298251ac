"""Store outages: a failed write is retried with backoff; a store that stays down stops the build
at its last persisted point (exit 75, `kiln resume ID`), its sandbox kept; a worker never keeps
a build it stopped running (SQLite writes failing as on a full disk; PostgreSQL stopped)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from kiln import Worker, WorkerConfig
from kiln.builds import submit
from kiln.cli import main
from kiln.durable import Session
from kiln.machine import load_machine_spec
from kiln.store import Store, StoreUnavailable, open_store
from kiln.testing import TEST_TOKEN, EmulatorClient
from kiln.testing.postgres import PostgresCluster
from support.durable import FAST_POLL_S, start
from support.emulator import builder_starts
from support.paths import HELLO
from support.polling import wait_until

pytestmark = pytest.mark.usefixtures("restore_logging")

EXIT_STORE_UNAVAILABLE = 75
# Short in tests: the production bound (a minute) is about riding out a database restart.
TEST_OUTAGE_S = 1.0
BUILDER_MS = 1500
HAPPY_PATH = [*list(load_machine_spec().states)[1:], "done"]

# SQLite refuses every write to a build as it would on a full disk, from any process, until the
# triggers are dropped.
_DISK_FULL = (
    "CREATE TRIGGER disk_full_{table} BEFORE {op} ON {table}"
    " BEGIN SELECT RAISE(ABORT, 'database or disk is full (simulated)'); END"
)
_FAILING = [("builds", "UPDATE"), ("events", "INSERT")]


def _fill_disk(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        for table, op in _FAILING:
            conn.execute(_DISK_FULL.format(table=table, op=op))


def _free_disk(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        for table, _ in _FAILING:
            conn.execute(f"DROP TRIGGER disk_full_{table}")


def _fill_disk_in_state(db: Path, state: str, done: threading.Event) -> None:
    """From another thread: fill the disk as soon as a build row reaches ``state``."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(db) as conn:
                row = conn.execute("SELECT count(*) FROM builds WHERE state = ?", (state,))
                if row.fetchone()[0]:
                    _fill_disk(db)
                    done.set()
                    return
        except sqlite3.OperationalError:
            pass  # the table is not there yet
        time.sleep(0.01)


@pytest.fixture
def short_outage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Session, "store_outage_s", TEST_OUTAGE_S, raising=False)


def test_kiln_build_stops_at_its_last_persisted_point_when_the_disk_stays_full(
    store_env: str,
    emulator: EmulatorClient,
    capsys: pytest.CaptureFixture[str],
    short_outage: None,
) -> None:
    db = Path(store_env.removeprefix("sqlite:///"))
    emulator.set_builder(duration_ms=BUILDER_MS)
    filled = threading.Event()
    filler = threading.Thread(target=_fill_disk_in_state, args=(db, "run_builder", filled))
    filler.start()

    code = main(["build", str(HELLO), "--api-url", emulator.url])
    filler.join()
    err = capsys.readouterr().err

    assert filled.is_set()
    assert code == EXIT_STORE_UNAVAILABLE, err
    with sqlite3.connect(db) as conn:
        (build_id,) = conn.execute("SELECT id FROM builds").fetchone()
    assert "last persisted point" in err and f"kiln resume {build_id}" in err, err
    assert "Traceback" not in err
    assert len(emulator.live_sandboxes()) == 1, "the builder sandbox is kept for the resume"

    _free_disk(db)
    assert main(["resume", build_id]) == 0
    with sqlite3.connect(db) as conn:
        (state,) = conn.execute("SELECT state FROM builds").fetchone()
    assert state == "done"
    assert builder_starts(emulator) == 1
    assert emulator.live_sandboxes() == []


class FlakyStore:
    """A store whose writes of the transition into ``state`` fail ``failures`` times."""

    def __init__(self, inner: Store, state: str, failures: int) -> None:
        self._inner = inner
        self._state = state
        self._failures = failures
        self.refused = 0

    async def commit_transition(self, id: str, **kwargs: Any) -> Any:
        if kwargs["state"] == self._state and self.refused < self._failures:
            self.refused += 1
            raise StoreUnavailable("database or disk is full (simulated)")
        return await self._inner.commit_transition(id, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_a_short_store_outage_is_ridden_out_and_loses_no_event(
    store: Store, emulator: EmulatorClient
) -> None:
    flaky = FlakyStore(store, "read_metadata", failures=3)
    build = start(flaky, emulator.url, Session(flaky, poll_s=FAST_POLL_S))  # type: ignore[arg-type]

    await build.result()

    assert flaky.refused == 3
    record = await store.get(build.state.id)
    assert record is not None and record.state == "done"
    events = await store.events(build.state.id)
    targets = [e.data["dest"] for e in events if e.kind == "transition"]
    assert targets == HAPPY_PATH
    assert builder_starts(emulator) == 1
    assert emulator.live_sandboxes() == []


@pytest.mark.slow
@pytest.mark.postgres
async def test_a_worker_claims_back_a_build_it_stopped_on_a_postgres_outage(
    emulator: EmulatorClient, short_outage: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENSORLAKE_API_KEY", TEST_TOKEN)
    emulator.set_builder(duration_ms=BUILDER_MS)
    with PostgresCluster() as cluster:
        url = cluster.create_database(f"outage_{uuid.uuid4().hex[:12]}")
        store, view = open_store(url), open_store(url)
        config = WorkerConfig(lease_s=2.0, renew_every_s=0.5, poll_s=0.1)
        worker = Worker(store, config, api_key=TEST_TOKEN)
        try:
            build_id = await submit(HELLO, store=view, api_url=emulator.url)
            running = asyncio.create_task(worker.run())

            async def in_builder() -> bool:
                record = await view.get(build_id)
                return record is not None and record.state == "run_builder"

            await wait_until(in_builder)
            cluster.stop_server()
            # The build stops once its writes have failed for the outage bound.
            await wait_until(lambda: not worker.running)
            cluster.start_server()

            async def ended() -> bool:
                try:
                    record = await view.get(build_id)
                except StoreUnavailable:
                    return False
                return record is not None and record.final

            await wait_until(ended, timeout_s=60)
            worker.drain()
            await running
            record = await view.get(build_id)
            assert record is not None and record.state == "done"
            assert record.owner is None
            assert builder_starts(emulator) == 1
            assert emulator.live_sandboxes() == []
        finally:
            await store.close()
            await view.close()
