"""The shared store: PostgreSQL, for many workers on many machines.

Builds are rows. Every read-decide-write locks the build's row (``SELECT ... FOR UPDATE``) inside
one transaction, and ``claim_next`` uses ``FOR UPDATE SKIP LOCKED`` so that workers racing for
work each skip the rows another is already deciding about instead of queueing behind it.

A small pool of connections per store (POOL_SIZE): one shared connection made every build of a
worker wait on every other build's writes, so that a builder sandbox's id, recorded right after
its creation, could wait behind log lines, and a round trip of a millisecond or two capped the
worker's throughput. Log appends and reads may hold all connections but one, so that a state
write or a lease renewal never waits behind them. Times are the workers' unix clocks (injectable for tests); leases are tens of seconds, so the
usual clock skew between machines is well inside them.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb

from kiln.errors import (
    AmbiguousBuildId,
    BuildNotFound,
    LeaseLost,
    OwnedElsewhere,
    StoreUnavailable,
    UsageError,
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
from kiln.store._migrations import (
    DELETE,
    FIND_CACHED,
    POSTGRES_LEDGER,
    PRUNE,
    RECORD_COLUMNS,
    TAKE_TURN,
    pending,
)
from kiln.store._urls import redact_url, scrub

Connection = psycopg.AsyncConnection[DictRow]

# A fixed key for the advisory lock that serialises migrations between workers starting at once
# (CREATE TABLE IF NOT EXISTS alone races on the system catalogs).
MIGRATION_LOCK_KEY = 0x6B696C6E  # "kiln"

# Give up connecting after this long: a worker with no database should say so, not hang.
CONNECT_TIMEOUT_S = 10

# Connections per store (per worker process): enough for a few builds' state writes at once,
# few enough that a fleet of workers stays inside PostgreSQL's max_connections (README).
POOL_SIZE = 4

# How many leased rows owned from this host one claim locks to check their owners' pids; few, so
# that other workers skip few rows while we look.
CLAIM_BATCH = 16

# A compare-and-set state write; the parameters are the new fields, then the id and the version
# the writer read.
_SAVE = (
    "UPDATE builds SET state = %s, data = %s, sandbox_id = %s, final = %s, schema_version = %s,"
    " holds_sandbox = %s, version = version + 1, updated_at = %s"
    " WHERE id = %s AND version = %s AND NOT final"
)

# Counting appended events on the build's row, which also locks it: ``event_count`` is the last
# seq handed out, ``events_dropped`` how many of them the bound has removed (store._base).
_COUNT_EVENTS = (
    "event_count = event_count + %(count)s,"
    " events_dropped = GREATEST(0, event_count + %(count)s - %(kept)s)"
)
# A transition: the compare-and-set state write, the lease, and the event count in one statement.
_COMMIT = (
    "UPDATE builds SET state = %(state)s, data = %(data)s, sandbox_id = %(sandbox_id)s,"
    " final = %(final)s, schema_version = %(schema_version)s, holds_sandbox = %(holds_sandbox)s,"
    " version = version + 1, updated_at = %(now)s,"
    " lease_expires_at = COALESCE(%(lease)s, lease_expires_at),"
    " cache_key = COALESCE(%(cache_key)s, cache_key),"
    f" {_COUNT_EVENTS} WHERE id = %(id)s AND version = %(expected)s AND NOT final"
    " RETURNING version, cancel_requested, event_count"
)

# Rows whose owner cannot be holding them any more, whatever host it was on.
_FREE = "(owner_host IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= %(now)s)"
_NOT_MINE = "(owner_host, owner_pid, owner_worker) IS DISTINCT FROM (%(host)s, %(pid)s, %(worker)s)"
# Claim order: builds someone ran before (version > 1) first, then by age (store._base.claim_order).
_CLAIM_ORDER = "ORDER BY (version = 1), created_at, ordinal"
_CLAIM_FREE = (
    f"SELECT {RECORD_COLUMNS}, ordinal FROM builds WHERE NOT final AND {_FREE}"
    f" {_CLAIM_ORDER} LIMIT 1 FOR UPDATE SKIP LOCKED"
)
_CLAIM_LOCAL = (
    f"SELECT {RECORD_COLUMNS}, ordinal FROM builds WHERE NOT final AND NOT {_FREE}"
    f" AND owner_host = %(host)s AND {_NOT_MINE} {_CLAIM_ORDER} LIMIT %(batch)s"
    " FOR UPDATE SKIP LOCKED"
)


class PostgresStore:
    """A :class:`~kiln.store.Store` in a PostgreSQL database (psycopg 3)."""

    def __init__(
        self,
        url: str,
        *,
        clock: Clock = time.time,
        head_events: int = HEAD_EVENTS,
        tail_events: int = TAIL_EVENTS,
        pool_size: int = POOL_SIZE,
    ) -> None:
        if pool_size < 1:
            raise UsageError(f"a store needs at least one connection, not {pool_size}")
        self._url = url
        self._clock = clock
        self._head = head_events
        self._tail = tail_events
        self._idle: list[Connection] = []
        self._slots = asyncio.Semaphore(pool_size)
        # Bulk work (log appends, reads for a reader) leaves one connection to the urgent.
        self._bulk = asyncio.Semaphore(max(1, pool_size - 1))
        self._migrated = False
        self._migrating = asyncio.Lock()

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
        now = self._clock()
        try:
            async with self._transaction() as conn:
                cursor = await conn.execute(
                    "INSERT INTO builds (id, name, state, version, schema_version, data,"
                    " sandbox_id, created_at, updated_at, cache_key)"
                    " VALUES (%s, %s, %s, 1, %s, %s, %s, %s, %s, %s)"
                    f" RETURNING {RECORD_COLUMNS}",
                    (id, name, state, schema_version, Jsonb(data), sandbox_id, now, now, cache_key),
                )
                return _record(await cursor.fetchone())
        except psycopg.errors.UniqueViolation:
            raise duplicate_build(id) from None

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
        params = (
            state,
            Jsonb(data),
            sandbox_id,
            final,
            schema_version,
            holds_sandbox,
            self._clock(),
        )
        async with self._transaction() as conn:
            cursor = await conn.execute(
                f"{_SAVE} RETURNING version", (*params, id, expected_version)
            )
            row = await cursor.fetchone()
            if row is not None:
                return int(row["version"])
            current = await _require(conn, id)
        raise stale_write(id, expected_version, current)

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
        now = self._clock()
        params = {
            "cache_key": cache_key,
            "state": state,
            "data": Jsonb(data),
            "sandbox_id": sandbox_id,
            "final": final,
            "schema_version": schema_version,
            "holds_sandbox": holds_sandbox,
            "now": now,
            "lease": None if lease_s is None else now + lease_s,
            "count": len(events),
            "kept": self._head + self._tail,
            "id": id,
            "expected": expected_version,
        }
        async with self._transaction() as conn:
            # One UPDATE writes the state, extends the lease, counts the events and locks the
            # row, so the events inserted after it cannot race another writer's; RETURNING hands
            # back what the rest needs without a SELECT.
            row = await (await conn.execute(_COMMIT, params)).fetchone()
            if row is not None:
                if events:
                    old_total = int(row["event_count"]) - len(events)
                    await self._insert_events(conn, id, events, old_total, now)
                return Committed(int(row["version"]), bool(row["cancel_requested"]))
            current = await _require(conn, id)
        raise stale_write(id, expected_version, current)

    async def get(self, id: str) -> BuildRecord | None:
        if not id:
            return None
        async with self._transaction(atomic=False) as conn:
            exact = await _fetch(conn, id)
            if exact is not None:
                return exact
            cursor = await conn.execute(
                f"SELECT {RECORD_COLUMNS} FROM builds WHERE left(id, %s) = %s ORDER BY id LIMIT %s",
                (len(id), id, AMBIGUOUS_SHOWN),
            )
            rows = await cursor.fetchall()
        if len(rows) > 1:
            raise AmbiguousBuildId(id, [row["id"] for row in rows])
        return _record(rows[0]) if rows else None

    async def list(
        self, *, state: str | None = None, limit: int = 100
    ) -> builtins.list[BuildRecord]:
        check_limit(limit)
        async with self._transaction(bulk=True, atomic=False) as conn:
            cursor = await conn.execute(
                f"SELECT {RECORD_COLUMNS} FROM builds WHERE %(state)s::text IS NULL"
                " OR state = %(state)s ORDER BY created_at DESC, ordinal DESC LIMIT %(limit)s",
                {"state": state, "limit": limit},
            )
            return [_record(row) for row in await cursor.fetchall()]

    async def find_cached(self, cache_key: str, *, state: str) -> BuildRecord | None:
        async with self._transaction(atomic=False) as conn:
            cursor = await conn.execute(FIND_CACHED, (cache_key, state))
            row = await cursor.fetchone()
        return _record(row) if row is not None else None

    async def append_events(self, id: str, events: Sequence[tuple[str, JsonObject]]) -> None:
        now = self._clock()
        async with self._transaction(bulk=True) as conn:
            cursor = await conn.execute(
                f"UPDATE builds SET {_COUNT_EVENTS} WHERE id = %(id)s RETURNING event_count",
                {"id": id, "count": len(events), "kept": self._head + self._tail},
            )
            row = await cursor.fetchone()
            if row is None:
                raise BuildNotFound(id)
            old_total = int(row["event_count"]) - len(events)
            await self._insert_events(conn, id, events, old_total, now)

    async def events(self, id: str, *, after_seq: int = 0) -> builtins.list[EventRow]:
        async with self._transaction(bulk=True, atomic=False) as conn:
            await _require(conn, id)
            cursor = await conn.execute(
                "SELECT seq, time, kind, data FROM events WHERE build_id = %s AND seq > %s"
                " ORDER BY seq",
                (id, after_seq),
            )
            rows = await cursor.fetchall()
        return [EventRow(row["seq"], row["time"], row["kind"], row["data"]) for row in rows]

    async def request_cancel(self, id: str) -> bool:
        async with self._transaction() as conn:
            if (await _require(conn, id, lock=True)).final:
                return False
            await conn.execute("UPDATE builds SET cancel_requested = TRUE WHERE id = %s", (id,))
            return True

    async def acquire(self, id: str, owner: Owner, *, lease_s: float) -> BuildRecord:
        check_lease(lease_s)
        async with self._transaction() as conn:
            record = await _require(conn, id, lock=True)
            now = self._clock()
            if record.owner is not None and owner_holds(
                record.owner, record.lease_expires_at, owner, now
            ):
                raise OwnedElsewhere(id, record.owner, record.lease_expires_at)
            return await _take(conn, record, owner, now + lease_s)

    async def renew(self, id: str, owner: Owner, *, lease_s: float) -> bool:
        check_lease(lease_s)
        # One statement, no transaction around it: the heartbeat of every running build.
        async with self._transaction(atomic=False) as conn:
            cursor = await conn.execute(
                "UPDATE builds SET lease_expires_at = %s WHERE id = %s"
                " AND (owner_host, owner_pid, owner_worker) = (%s, %s, %s)"
                " RETURNING cancel_requested",
                (self._clock() + lease_s, id, owner.host, owner.pid, owner.worker_id),
            )
            row = await cursor.fetchone()
            if row is not None:
                return bool(row["cancel_requested"])
            record = await _require(conn, id)
        raise LeaseLost(id, owner, record.owner)

    async def release(self, id: str, owner: Owner) -> None:
        async with self._transaction() as conn:
            if (await _require(conn, id, lock=True)).owner == owner:
                await conn.execute(
                    "UPDATE builds SET owner_host = NULL, owner_pid = NULL, owner_worker = NULL,"
                    " lease_expires_at = NULL WHERE id = %s",
                    (id,),
                )

    async def claim_next(self, owner: Owner, *, lease_s: float) -> BuildRecord | None:
        check_lease(lease_s)
        now = self._clock()
        params = {
            "now": now,
            "host": owner.host,
            "pid": owner.pid,
            "worker": owner.worker_id,
            "batch": CLAIM_BATCH,
        }
        async with self._transaction() as conn:
            # The first free row, one at a time, so that racing workers each lock a different
            # row; and the rows leased from this host, whose owner's pid may show it dead before
            # its lease ends (an orphan is taken at once, and before new work).
            free = await (await conn.execute(_CLAIM_FREE, params)).fetchall()
            local = await (await conn.execute(_CLAIM_LOCAL, params)).fetchall()
            rows = [row for row in [*free, *local] if claimable(_record(row), owner, now)]
            if not rows:
                return None
            best = min(rows, key=lambda row: (*claim_order(_record(row)), row["ordinal"]))
            return await _take(conn, _record(best), owner, now + lease_s, claim=True)

    async def sandbox_holders(self, *, limit: int = 1000) -> builtins.list[BuildRecord]:
        check_limit(limit)
        async with self._transaction(bulk=True, atomic=False) as conn:
            cursor = await conn.execute(
                f"SELECT {RECORD_COLUMNS} FROM builds WHERE holds_sandbox"
                " ORDER BY updated_at LIMIT %s",
                (limit,),
            )
            return [_record(row) for row in await cursor.fetchall()]

    async def forget_sandbox(self, id: str) -> None:
        async with self._transaction(atomic=False) as conn:
            await conn.execute("UPDATE builds SET holds_sandbox = FALSE WHERE id = %s", (id,))

    async def prune(self, *, finished_before: float, limit: int = 1000) -> int:
        check_limit(limit)
        async with self._transaction(bulk=True, atomic=False) as conn:
            cursor = await conn.execute(PRUNE, (finished_before, limit))
            return cursor.rowcount

    async def delete(self, id: str, *, expected_version: int) -> bool:
        async with self._transaction() as conn:
            # The build's events go with it (ON DELETE CASCADE).
            cursor = await conn.execute(DELETE, (id, expected_version))
            if not cursor.rowcount:
                await _require(conn, id, lock=False)
            return bool(cursor.rowcount)

    async def take_turn(self, name: str, holder: str, *, every_s: float) -> bool:
        now = self._clock()
        async with self._transaction(atomic=False) as conn:
            cursor = await conn.execute(TAKE_TURN, (name, now, holder, now - every_s))
            return cursor.rowcount == 1

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()

    async def _insert_events(
        self,
        conn: Connection,
        id: str,
        events: Sequence[tuple[str, JsonObject]],
        old_total: int,
        now: float,
    ) -> None:
        """Store ``events`` after ``old_total`` earlier ones, inside the caller's transaction,
        which holds the build's row lock and has already counted them."""
        plan = plan_events(old_total, len(events), head=self._head, tail=self._tail)
        if plan.drop_from <= plan.drop_to:
            await conn.execute(
                "DELETE FROM events WHERE build_id = %s AND seq BETWEEN %s AND %s",
                (id, plan.drop_from, plan.drop_to),
            )
        kept = [
            (plan.first_seq + offset, kind, Jsonb(data))
            for offset, ((kind, data), keep) in enumerate(zip(events, plan.keep, strict=True))
            if keep
        ]
        if kept:
            seqs, kinds, datas = (list(column) for column in zip(*kept, strict=True))
            # One statement for the whole batch (executemany would send one per event).
            await conn.execute(
                "INSERT INTO events (build_id, seq, time, kind, data)"
                " SELECT %s, seq, %s, kind, data"
                " FROM unnest(%s::bigint[], %s::text[], %s::jsonb[]) AS t(seq, kind, data)",
                (id, now, seqs, kinds, datas),
            )

    @contextlib.asynccontextmanager
    async def _transaction(
        self, *, bulk: bool = False, atomic: bool = True
    ) -> AsyncIterator[Connection]:
        """A pooled connection inside a transaction (``atomic``), or in autocommit for a single
        statement, which then costs no BEGIN and COMMIT."""
        async with contextlib.AsyncExitStack() as stack:
            if bulk:
                await stack.enter_async_context(self._bulk)
            async with self._slots:
                conn: Connection | None = None
                try:
                    conn = await self._connection()
                    scope = conn.transaction() if atomic else contextlib.nullcontext()
                    async with scope:
                        yield conn
                except (psycopg.OperationalError, psycopg.InterfaceError) as error:
                    raise self._unavailable(error) from None
                finally:
                    if conn is not None:
                        await self._give_back(conn)

    async def _connection(self) -> Connection:
        """An idle connection, else a new one (the caller holds a slot, so the pool's bound
        holds)."""
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._url,
                autocommit=True,
                row_factory=dict_row,
                connect_timeout=CONNECT_TIMEOUT_S,
            )
        except psycopg.ProgrammingError as error:
            # An option libpq parses but refuses, such as sslmode=bogus.
            raise UsageError(
                f"invalid PostgreSQL URL {redact_url(self._url)}:"
                f" {scrub(str(error).strip(), self._url)}",
                hint="fix the URL in --store / KILN_STORE",
            ) from None
        await self._migrate_once(conn)
        return conn

    async def _migrate_once(self, conn: Connection) -> None:
        async with self._migrating:
            if not self._migrated:
                try:
                    await _migrate(conn, redact_url(self._url))
                except BaseException:
                    await conn.close()
                    raise
                self._migrated = True

    async def _give_back(self, conn: Connection) -> None:
        # A connection the server dropped is closed (or broken): the next operation reconnects.
        if conn.closed or conn.broken:
            return
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            # Left mid-transaction by a cancelled caller: never hand it to another operation.
            await conn.close()
            return
        self._idle.append(conn)

    def _unavailable(self, error: psycopg.Error) -> StoreUnavailable:
        # ``from None``: the driver's exception may quote the connection string, password included.
        return StoreUnavailable(
            f"the PostgreSQL store {redact_url(self._url)} failed:"
            f" {scrub(str(error).strip(), self._url)}",
            hint="check that the database is up and the URL in --store / KILN_STORE is right",
        )


async def _migrate(conn: Connection, where: str) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        await conn.execute(POSTGRES_LEDGER)
        cursor = await conn.execute("SELECT version FROM schema_migrations")
        applied = [row["version"] for row in await cursor.fetchall()]
        for migration in pending(applied, where):
            for statement in migration.postgres:
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, %s, %s)",
                (migration.version, migration.name, time.time()),
            )


async def _take(
    conn: Connection,
    record: BuildRecord,
    owner: Owner,
    lease_expires_at: float,
    *,
    claim: bool = False,
) -> BuildRecord:
    version = claimed_version(record, owner, claim=claim)
    cursor = await conn.execute(
        "UPDATE builds SET owner_host = %s, owner_pid = %s, owner_worker = %s,"
        f" lease_expires_at = %s, version = %s WHERE id = %s RETURNING {RECORD_COLUMNS}",
        (owner.host, owner.pid, owner.worker_id, lease_expires_at, version, record.id),
    )
    return _record(await cursor.fetchone())


async def _fetch(conn: Connection, id: str, *, lock: bool = False) -> BuildRecord | None:
    suffix = " FOR UPDATE" if lock else ""
    cursor = await conn.execute(f"SELECT {RECORD_COLUMNS} FROM builds WHERE id = %s{suffix}", (id,))
    row = await cursor.fetchone()
    return _record(row) if row is not None else None


async def _require(conn: Connection, id: str, *, lock: bool = False) -> BuildRecord:
    record = await _fetch(conn, id, lock=lock)
    if record is None:
        raise BuildNotFound(id)
    return record


def _record(row: dict[str, Any] | None) -> BuildRecord:
    # Only called on rows a statement just returned or that were checked for None.
    assert row is not None
    return record_from_row(row, row["data"])
