"""The default store: one SQLite file, shared safely by the kiln processes of one machine.

WAL mode lets readers run while one process writes; every write is a ``BEGIN IMMEDIATE``
transaction, which takes the database's single write lock up front, so a read-decide-write (a
compare-and-set, a takeover) cannot interleave with another process's. The stdlib driver blocks,
so each operation runs whole in a worker thread.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from kiln.errors import (
    AmbiguousBuildId,
    BuildNotFound,
    LeaseLost,
    OwnedElsewhere,
    StoreUnavailable,
)
from kiln.store._base import (
    AMBIGUOUS_SHOWN,
    DEFAULT_SCHEMA_VERSION,
    HEAD_EVENTS,
    TAIL_EVENTS,
    BuildRecord,
    Clock,
    Committed,
    EventRow,
    JsonObject,
    Owner,
    check_lease,
    check_limit,
    claim_order,
    claimable,
    claimed_version,
    duplicate_build,
    owner_holds,
    plan_events,
    record_from_row,
    stale_write,
)
from kiln.store._migrations import DELETE as _DELETE
from kiln.store._migrations import FIND_CACHED as _FIND_CACHED
from kiln.store._migrations import PRUNE as _PRUNE
from kiln.store._migrations import RECORD_COLUMNS, SQLITE_LEDGER, pending
from kiln.store._migrations import TAKE_TURN as _TAKE_TURN

T = TypeVar("T")

# How long a writer waits for another process's write transaction before giving up. Writes are
# short (one build's row and a few events), so waiting this long means something is stuck.
BUSY_TIMEOUT_S = 30.0

# A compare-and-set state write; the parameters are the new fields, then the id and the version
# the writer read.
_SAVE = (
    "UPDATE builds SET state = ?, data = ?, sandbox_id = ?, final = ?, schema_version = ?,"
    " holds_sandbox = ?, version = version + 1, updated_at = ?"
    " WHERE id = ? AND version = ? AND NOT final"
)


class SQLiteStore:
    """A :class:`~kiln.store.Store` in one SQLite database file."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Clock = time.time,
        head_events: int = HEAD_EVENTS,
        tail_events: int = TAIL_EVENTS,
    ) -> None:
        self._path = path
        self._clock = clock
        self._head = head_events
        self._tail = tail_events
        self._conn: sqlite3.Connection | None = None
        # A thread lock, not an asyncio one: a cancelled caller leaves its thread running, and the
        # next operation must still wait for it before touching the shared connection.
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self._path

    async def create(
        self,
        *,
        id: str,
        name: str,
        state: str,
        data: JsonObject,
        sandbox_id: str | None = None,
        schema_version: int = DEFAULT_SCHEMA_VERSION,
        cache_key: str | None = None,
    ) -> BuildRecord:
        def run(conn: sqlite3.Connection) -> BuildRecord:
            now = self._clock()
            with _write(conn):
                try:
                    conn.execute(
                        "INSERT INTO builds (id, ordinal, name, state, version, schema_version,"
                        " data, sandbox_id, created_at, updated_at, cache_key)"
                        " VALUES (?, (SELECT COALESCE(MAX(ordinal), 0) + 1 FROM builds),"
                        " ?, ?, 1, ?, ?, ?, ?, ?, ?)",
                        (
                            *(id, name, state, schema_version, _dump(data), sandbox_id),
                            *(now, now, cache_key),
                        ),
                    )
                except sqlite3.IntegrityError:
                    raise duplicate_build(id) from None
                return _require(conn, id)

        return await self._run(run)

    async def save(
        self,
        id: str,
        *,
        expected_version: int,
        state: str,
        data: JsonObject,
        sandbox_id: str | None,
        final: bool,
        schema_version: int = DEFAULT_SCHEMA_VERSION,
        holds_sandbox: bool = False,
    ) -> int:
        def run(conn: sqlite3.Connection) -> int:
            params = (
                state,
                _dump(data),
                sandbox_id,
                final,
                schema_version,
                holds_sandbox,
                self._clock(),
            )
            with _write(conn):
                if conn.execute(_SAVE, (*params, id, expected_version)).rowcount == 1:
                    return expected_version + 1
                current = _require(conn, id)
            raise stale_write(id, expected_version, current)

        return await self._run(run)

    async def commit_transition(
        self,
        id: str,
        *,
        expected_version: int,
        state: str,
        data: JsonObject,
        sandbox_id: str | None,
        final: bool,
        events: Sequence[tuple[str, JsonObject]],
        schema_version: int = DEFAULT_SCHEMA_VERSION,
        holds_sandbox: bool = False,
        lease_s: float | None = None,
        cache_key: str | None = None,
    ) -> Committed:
        def run(conn: sqlite3.Connection) -> Committed:
            now = self._clock()
            params = (state, _dump(data), sandbox_id, final, schema_version, holds_sandbox, now)
            with _write(conn):
                # RETURNING hands back what the rest of the transaction needs without a SELECT.
                rows = conn.execute(
                    f"{_SAVE} RETURNING cancel_requested, event_count",
                    (*params, id, expected_version),
                ).fetchall()
                if rows:
                    if cache_key is not None:
                        conn.execute(
                            "UPDATE builds SET cache_key = ? WHERE id = ?", (cache_key, id)
                        )
                    if events:
                        self._append(conn, id, events, rows[0]["event_count"], now)
                    if lease_s is not None:
                        conn.execute(
                            "UPDATE builds SET lease_expires_at = ? WHERE id = ?",
                            (now + lease_s, id),
                        )
                    return Committed(expected_version + 1, bool(rows[0]["cancel_requested"]))
                current = _require(conn, id)
            raise stale_write(id, expected_version, current)

        return await self._run(run)

    async def get(self, id: str) -> BuildRecord | None:
        def run(conn: sqlite3.Connection) -> BuildRecord | None:
            if not id:
                return None
            exact = _fetch(conn, id)
            if exact is not None:
                return exact
            rows = conn.execute(
                f"SELECT {RECORD_COLUMNS} FROM builds WHERE substr(id, 1, ?) = ?"
                " ORDER BY id LIMIT ?",
                (len(id), id, AMBIGUOUS_SHOWN),
            ).fetchall()
            if len(rows) > 1:
                raise AmbiguousBuildId(id, [row["id"] for row in rows])
            return _record(rows[0]) if rows else None

        return await self._run(run)

    async def list(
        self, *, state: str | None = None, limit: int = 100
    ) -> builtins.list[BuildRecord]:
        check_limit(limit)

        def run(conn: sqlite3.Connection) -> builtins.list[BuildRecord]:
            rows = conn.execute(
                f"SELECT {RECORD_COLUMNS} FROM builds WHERE ? IS NULL OR state = ?"
                " ORDER BY created_at DESC, ordinal DESC LIMIT ?",
                (state, state, limit),
            ).fetchall()
            return [_record(row) for row in rows]

        return await self._run(run)

    async def find_cached(self, cache_key: str, *, state: str) -> BuildRecord | None:
        def run(conn: sqlite3.Connection) -> BuildRecord | None:
            row = conn.execute(_FIND_CACHED.replace("%s", "?"), (cache_key, state)).fetchone()
            return _record(row) if row is not None else None

        return await self._run(run)

    async def append_events(self, id: str, events: Sequence[tuple[str, JsonObject]]) -> None:
        def run(conn: sqlite3.Connection) -> None:
            with _write(conn):
                row = conn.execute("SELECT event_count FROM builds WHERE id = ?", (id,)).fetchone()
                if row is None:
                    raise BuildNotFound(id)
                self._append(conn, id, events, row[0], self._clock())

        await self._run(run)

    async def events(self, id: str, *, after_seq: int = 0) -> builtins.list[EventRow]:
        def run(conn: sqlite3.Connection) -> builtins.list[EventRow]:
            _require(conn, id)
            rows = conn.execute(
                "SELECT seq, time, kind, data FROM events WHERE build_id = ? AND seq > ?"
                " ORDER BY seq",
                (id, after_seq),
            ).fetchall()
            return [EventRow(row[0], row[1], row[2], json.loads(row[3])) for row in rows]

        return await self._run(run)

    async def request_cancel(self, id: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            with _write(conn):
                if _require(conn, id).final:
                    return False
                conn.execute("UPDATE builds SET cancel_requested = TRUE WHERE id = ?", (id,))
                return True

        return await self._run(run)

    async def acquire(self, id: str, owner: Owner, *, lease_s: float) -> BuildRecord:
        check_lease(lease_s)

        def run(conn: sqlite3.Connection) -> BuildRecord:
            with _write(conn):
                record = _require(conn, id)
                now = self._clock()
                if record.owner is not None and owner_holds(
                    record.owner, record.lease_expires_at, owner, now
                ):
                    raise OwnedElsewhere(id, record.owner, record.lease_expires_at)
                return _take(conn, record, owner, now + lease_s)

        return await self._run(run)

    async def renew(self, id: str, owner: Owner, *, lease_s: float) -> bool:
        check_lease(lease_s)

        def run(conn: sqlite3.Connection) -> bool:
            with _write(conn):
                record = _require(conn, id)
                if record.owner != owner:
                    raise LeaseLost(id, owner, record.owner)
                conn.execute(
                    "UPDATE builds SET lease_expires_at = ? WHERE id = ?",
                    (self._clock() + lease_s, id),
                )
                return record.cancel_requested

        return await self._run(run)

    async def release(self, id: str, owner: Owner) -> None:
        def run(conn: sqlite3.Connection) -> None:
            with _write(conn):
                if _require(conn, id).owner == owner:
                    conn.execute(
                        "UPDATE builds SET owner_host = NULL, owner_pid = NULL,"
                        " owner_worker = NULL, lease_expires_at = NULL WHERE id = ?",
                        (id,),
                    )

        await self._run(run)

    async def claim_next(self, owner: Owner, *, lease_s: float) -> BuildRecord | None:
        check_lease(lease_s)

        def run(conn: sqlite3.Connection) -> BuildRecord | None:
            with _write(conn):
                now = self._clock()
                # One machine runs few builds at a time, so reading all unfinished rows is cheap
                # and keeps the ownership rule in one place (Python) instead of two.
                rows = conn.execute(
                    f"SELECT {RECORD_COLUMNS} FROM builds WHERE NOT final"
                    " ORDER BY created_at, ordinal"
                ).fetchall()
                # sorted() is stable: ties stay in creation order.
                for record in sorted(map(_record, rows), key=claim_order):
                    if claimable(record, owner, now):
                        return _take(conn, record, owner, now + lease_s, claim=True)
                return None

        return await self._run(run)

    async def sandbox_holders(self, *, limit: int = 1000) -> builtins.list[BuildRecord]:
        check_limit(limit)

        def run(conn: sqlite3.Connection) -> builtins.list[BuildRecord]:
            rows = conn.execute(
                f"SELECT {RECORD_COLUMNS} FROM builds WHERE holds_sandbox"
                " ORDER BY updated_at LIMIT ?",
                (limit,),
            ).fetchall()
            return [_record(row) for row in rows]

        return await self._run(run)

    async def forget_sandbox(self, id: str) -> None:
        def run(conn: sqlite3.Connection) -> None:
            with _write(conn):
                conn.execute("UPDATE builds SET holds_sandbox = 0 WHERE id = ?", (id,))

        await self._run(run)

    async def prune(self, *, finished_before: float, limit: int = 1000) -> int:
        check_limit(limit)

        def run(conn: sqlite3.Connection) -> int:
            with _write(conn):
                return conn.execute(_PRUNE.replace("%s", "?"), (finished_before, limit)).rowcount

        return await self._run(run)

    async def delete(self, id: str, *, expected_version: int) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            with _write(conn):
                # The build's events go with it (ON DELETE CASCADE).
                deleted = conn.execute(_DELETE.replace("%s", "?"), (id, expected_version)).rowcount
                if not deleted:
                    _require(conn, id)
                return bool(deleted)

        return await self._run(run)

    async def take_turn(self, name: str, holder: str, *, every_s: float) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            now = self._clock()
            with _write(conn):
                cursor = conn.execute(
                    _TAKE_TURN.replace("%s", "?"), (name, now, holder, now - every_s)
                )
                return cursor.rowcount == 1

        return await self._run(run)

    async def close(self) -> None:
        def run() -> None:
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        await asyncio.to_thread(run)

    def _append(
        self,
        conn: sqlite3.Connection,
        id: str,
        events: Sequence[tuple[str, JsonObject]],
        old_total: int,
        now: float,
    ) -> None:
        """Add ``events`` after ``old_total`` earlier ones, inside the caller's transaction."""
        plan = plan_events(old_total, len(events), head=self._head, tail=self._tail)
        conn.execute(
            "DELETE FROM events WHERE build_id = ? AND seq BETWEEN ? AND ?",
            (id, plan.drop_from, plan.drop_to),
        )
        conn.executemany(
            "INSERT INTO events (build_id, seq, time, kind, data) VALUES (?, ?, ?, ?, ?)",
            [
                (id, plan.first_seq + offset, now, kind, _dump(data))
                for offset, ((kind, data), kept) in enumerate(zip(events, plan.keep, strict=True))
                if kept
            ],
        )
        conn.execute(
            "UPDATE builds SET event_count = ?, events_dropped = ? WHERE id = ?",
            (plan.total, plan.dropped, id),
        )

    async def _run(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self._call, operation)

    def _call(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                return operation(self._connection())
            except sqlite3.Error as error:
                raise StoreUnavailable(
                    f"the SQLite store {self._path} failed: {error}",
                    hint="check that the file and its directory are writable, or choose another"
                    " store with --store / KILN_STORE",
                ) from error

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = _open(self._path)
        return self._conn


def _open(path: Path) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreUnavailable(
            f"cannot create the directory for the SQLite store {path}: {error.strerror}",
            hint="choose a writable location with --store sqlite:////absolute/path.db",
        ) from error
    # isolation_level=None: the driver must not open transactions behind our back; we say BEGIN.
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL, not FULL: in WAL mode a commit is written to the log file (the OS holds it from
        # then on) before the call returns, so a killed process (the crash `kiln resume` is built
        # for) loses no committed transition; only the fsync at each commit is skipped. An OS crash
        # or power cut can lose the last few commits, and then the build resumes from an earlier
        # transition, whose handlers are re-entrant: a sandbox created in the lost window is kept
        # alive by nobody and ends with its 300 s timeout. On a busy disk FULL's fsync was most of
        # a transition's persist time (benchmarks/ANALYSIS.md, section 4).
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        _migrate(conn, str(path))
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection, where: str) -> None:
    with _write(conn):
        conn.execute(SQLITE_LEDGER)
        applied = [row[0] for row in conn.execute("SELECT version FROM schema_migrations")]
        for migration in pending(applied, where):
            for statement in migration.sqlite:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, time.time()),
            )


@contextlib.contextmanager
def _write(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _take(
    conn: sqlite3.Connection,
    record: BuildRecord,
    owner: Owner,
    lease_expires_at: float,
    *,
    claim: bool = False,
) -> BuildRecord:
    version = claimed_version(record, owner, claim=claim)
    conn.execute(
        "UPDATE builds SET owner_host = ?, owner_pid = ?, owner_worker = ?, lease_expires_at = ?,"
        " version = ? WHERE id = ?",
        (owner.host, owner.pid, owner.worker_id, lease_expires_at, version, record.id),
    )
    return _require(conn, record.id)


def _fetch(conn: sqlite3.Connection, id: str) -> BuildRecord | None:
    row = conn.execute(f"SELECT {RECORD_COLUMNS} FROM builds WHERE id = ?", (id,)).fetchone()
    return _record(row) if row is not None else None


def _require(conn: sqlite3.Connection, id: str) -> BuildRecord:
    record = _fetch(conn, id)
    if record is None:
        raise BuildNotFound(id)
    return record


def _record(row: sqlite3.Row) -> BuildRecord:
    return record_from_row(row, json.loads(row["data"]))


def _dump(data: JsonObject) -> str:
    return json.dumps(data, separators=(",", ":"))
