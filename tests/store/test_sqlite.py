"""What only the SQLite store has to get right: the file, WAL, migrations, several processes."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.errors import ConfigError
from kiln.store import OwnedElsewhere, Owner, SQLiteStore, StoreUnavailable
from kiln.store._migrations import LATEST_VERSION, MIGRATIONS, SQLITE_LEDGER

# Another kiln process writing to the same file.
_OTHER_PROCESS = """
import asyncio, sys
from kiln.store import open_store
async def main():
    store = open_store(sys.argv[1])
    record = await store.get("mine")
    await store.save("mine", expected_version=record.version, state="from-child", data={"by": "child"},
                     sandbox_id=None, final=False)
    await store.create(id="theirs", name="child", state="prepare", data={})
    await store.close()
asyncio.run(main())
"""


def _tables(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


async def test_the_database_is_in_wal_mode(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "b.db")
    await store.create(id="b-1", name="n", state="s", data={})
    await store.close()
    assert _tables(tmp_path / "b.db", "PRAGMA journal_mode") == [("wal",)]


async def test_opening_twice_migrates_once_and_keeps_the_data(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    first = SQLiteStore(path)
    await first.create(id="b-1", name="n", state="s", data={"k": "v"})
    await first.close()
    second = SQLiteStore(path)
    assert (await second.get("b-1")).data == {"k": "v"}  # type: ignore[union-attr]
    await second.close()
    applied = _tables(path, "SELECT version FROM schema_migrations ORDER BY version")
    assert applied == [(m.version,) for m in MIGRATIONS]


async def test_a_database_from_a_newer_kiln_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    store = SQLiteStore(path)
    await store.list()
    await store.close()
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO schema_migrations VALUES (?, 'from the future', 0)", (LATEST_VERSION + 1,)
        )
    later = SQLiteStore(path)
    with pytest.raises(ConfigError, match="newer than this kiln"):
        await later.list()
    await later.close()


async def test_two_stores_on_one_file_see_each_others_writes(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    one, two = SQLiteStore(path), SQLiteStore(path)
    await one.create(id="b-1", name="n", state="prepare", data={})
    version = await two.save(
        "b-1", expected_version=1, state="upload", data={}, sandbox_id=None, final=False
    )
    assert (await one.get("b-1")).version == version  # type: ignore[union-attr]
    await one.close()
    await two.close()


async def test_another_process_sees_and_makes_writes(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    store = SQLiteStore(path)
    await store.create(id="mine", name="n", state="prepare", data={})
    subprocess.run([sys.executable, "-c", _OTHER_PROCESS, f"sqlite:///{path}"], check=True)
    mine = await store.get("mine")
    assert (mine.state, mine.data, mine.version) == ("from-child", {"by": "child"}, 2)  # type: ignore[union-attr]
    assert (await store.get("theirs")) is not None
    await store.close()


async def test_an_unusable_location_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    store = SQLiteStore(blocker / "builds.db")
    with pytest.raises(StoreUnavailable, match="a-file"):
        await store.list()
    await store.close()


async def test_a_corrupt_file_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    path.write_bytes(b"this is not a database" * 100)
    store = SQLiteStore(path)
    with pytest.raises(StoreUnavailable, match="not a database"):
        await store.list()
    await store.close()


# A kiln process that owns a build until told to stop.
_OWNER_PROCESS = """
import asyncio, sys
from kiln.store import Owner, open_store
async def main():
    store = open_store(sys.argv[1])
    await store.acquire("b-1", Owner.current("child"), lease_s=30)
    await store.close()
asyncio.run(main())
print("owned", flush=True)
sys.stdin.readline()
"""


async def test_a_live_owner_process_is_named_and_its_death_frees_the_build(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    store = SQLiteStore(path)
    await store.create(id="b-1", name="n", state="prepare", data={})
    child = subprocess.Popen(
        [sys.executable, "-c", _OWNER_PROCESS, f"sqlite:///{path}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "owned\n"
        with pytest.raises(OwnedElsewhere, match=f"pid {child.pid} ") as caught:
            await store.acquire("b-1", Owner.current("resumer"), lease_s=30)
        assert caught.value.owner.worker_id == "child"
    finally:
        child.kill()
        child.wait()
    # Its lease has most of 30 s to run, but its process is gone from this host.
    taken = await store.acquire("b-1", Owner.current("resumer"), lease_s=30)
    assert taken.owner == Owner.current("resumer")
    await store.close()


# A process that commits a transition and is killed at once, before it could close anything.
_KILLED_AFTER_COMMIT = """
import asyncio, os, signal, sys
from kiln.store import SQLiteStore
from pathlib import Path
async def main():
    store = SQLiteStore(Path(sys.argv[1]))
    await store.create(id="b-1", name="n", state="prepare", data={})
    await store.commit_transition("b-1", expected_version=1, state="upload", data={"at": "upload"},
                                  sandbox_id="sbx", final=False, events=[("log", {"n": 1})])
    os.kill(os.getpid(), signal.SIGKILL)
asyncio.run(main())
"""


async def test_commits_are_not_fsynced_one_by_one(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "b.db")
    await store.create(id="b-1", name="n", state="s", data={})
    assert store._conn is not None
    # 1 is NORMAL: in WAL mode a commit survives a killed process without an fsync of its own.
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 1
    await store.close()


async def test_a_commit_survives_the_process_being_killed(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    child = subprocess.run([sys.executable, "-c", _KILLED_AFTER_COMMIT, str(path)], check=False)
    assert child.returncode == -signal.SIGKILL
    store = SQLiteStore(path)
    record = await store.get("b-1")
    assert record is not None and (record.state, record.version) == ("upload", 2)
    assert [e.data for e in await store.events("b-1")] == [{"n": 1}]
    await store.close()


async def test_a_store_of_the_previous_schema_gains_the_cache_key(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with sqlite3.connect(path) as conn:
        conn.execute(SQLITE_LEDGER)
        for migration in MIGRATIONS[:-1]:
            for statement in migration.sqlite:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, 0)",
                (migration.version, migration.name),
            )
        conn.execute(
            "INSERT INTO builds (id, ordinal, name, state, version, schema_version, data,"
            " created_at, updated_at, final) VALUES ('b-1', 1, 'n', 'done', 3, 1, '{}', 0, 0, 1)"
        )
    store = SQLiteStore(path)
    assert (await store.get("b-1")).state == "done"  # type: ignore[union-attr]
    assert await store.find_cached("k", state="done") is None
    await store.close()
    applied = _tables(path, "SELECT version FROM schema_migrations ORDER BY version")
    assert applied == [(m.version,) for m in MIGRATIONS]
