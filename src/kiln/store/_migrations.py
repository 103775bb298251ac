"""Versioned schema migrations, one numbered list for SQLite and PostgreSQL.

Each database records the migrations it has applied in ``schema_migrations``; opening a store
applies the missing ones in order, inside the same transaction that reads the table, so two
processes opening one database at once apply each migration exactly once. A migration is never
edited after release: a schema change is a new entry at the end.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from kiln.errors import ConfigError


@attrs.frozen
class Migration:
    version: int
    name: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


SQLITE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at REAL NOT NULL
)"""

POSTGRES_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at DOUBLE PRECISION NOT NULL
)"""

# ``ordinal`` orders builds created within one clock tick; ``event_count`` is the last event seq
# ever handed out, so seqs stay unique after the bound deletes events.
_BUILDS_COLUMNS = """
    id TEXT PRIMARY KEY,
    ordinal {ordinal},
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    version BIGINT NOT NULL,
    schema_version INTEGER NOT NULL,
    data {json} NOT NULL,
    sandbox_id TEXT,
    owner_host TEXT,
    owner_pid BIGINT,
    owner_worker TEXT,
    lease_expires_at {real},
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    created_at {real} NOT NULL,
    updated_at {real} NOT NULL,
    final BOOLEAN NOT NULL DEFAULT FALSE,
    event_count BIGINT NOT NULL DEFAULT 0,
    events_dropped BIGINT NOT NULL DEFAULT 0
"""

_EVENTS_COLUMNS = """
    build_id TEXT NOT NULL REFERENCES builds(id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    time {real} NOT NULL,
    kind TEXT NOT NULL,
    data {json} NOT NULL,
    PRIMARY KEY (build_id, seq)
"""


def _initial(ordinal: str, json: str, real: str) -> tuple[str, ...]:
    types = {"ordinal": ordinal, "json": json, "real": real}
    return (
        f"CREATE TABLE builds ({_BUILDS_COLUMNS.format(**types)})",
        f"CREATE TABLE events ({_EVENTS_COLUMNS.format(**types)})",
        "CREATE INDEX builds_by_age ON builds (created_at, ordinal)",
        "CREATE INDEX builds_unfinished ON builds (final, created_at)",
    )


def _fleet(queue_order: str, false: str, real: str) -> tuple[str, ...]:
    return (
        f"ALTER TABLE builds ADD COLUMN holds_sandbox BOOLEAN NOT NULL DEFAULT {false}",
        # Existing unfinished builds may hold one; the reaper clears the mark after a look.
        "UPDATE builds SET holds_sandbox = (sandbox_id IS NOT NULL) WHERE NOT final",
        "DROP INDEX builds_unfinished",
        # Claims read only unfinished builds, however long the history grows.
        f"CREATE INDEX builds_queue ON builds ({queue_order}) WHERE NOT final",
        "CREATE INDEX builds_holding ON builds (updated_at) WHERE holds_sandbox",
        "CREATE INDEX builds_finished ON builds (updated_at) WHERE final",
        f"CREATE TABLE turns (name TEXT PRIMARY KEY, taken_at {real} NOT NULL,"
        " holder TEXT NOT NULL)",
    )


# The build cache: a finished build is found by its cache key (the build key and where its template
# was registered, as one digest); only builds that have one are indexed.
_CACHE_KEY = (
    "ALTER TABLE builds ADD COLUMN cache_key TEXT",
    "CREATE INDEX builds_by_cache_key ON builds (cache_key, updated_at)"
    " WHERE cache_key IS NOT NULL",
)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        name="builds and their event logs",
        # SQLite has one automatic counter per table (rowid), so the store fills ``ordinal``.
        sqlite=_initial("INTEGER NOT NULL", "TEXT", "REAL"),
        postgres=_initial("BIGINT GENERATED ALWAYS AS IDENTITY", "JSONB", "DOUBLE PRECISION"),
    ),
    Migration(
        version=2,
        name="a fleet's indexes: the queue, sandbox holders, finished builds; fleet-wide turns",
        sqlite=_fleet("created_at, ordinal", "0", "REAL"),
        postgres=_fleet("(version = 1), created_at, ordinal", "FALSE", "DOUBLE PRECISION"),
    ),
    Migration(
        version=3,
        name="the build cache: each build's cache key, indexed",
        sqlite=_CACHE_KEY,
        postgres=_CACHE_KEY,
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version

# The ``builds`` columns a BuildRecord is read from, in both dialects.
RECORD_COLUMNS = (
    "id, name, state, version, schema_version, data, sandbox_id, owner_host, owner_pid,"
    " owner_worker, lease_expires_at, cancel_requested, created_at, updated_at, final,"
    " events_dropped, holds_sandbox"
)


# Statements both dialects share, with %s placeholders (SQLite's driver wants ?).
# Finished builds past the retention, oldest first, in batches (events go with them: ON DELETE
# CASCADE); a build whose sandbox the reaper still watches stays.
PRUNE = (
    "DELETE FROM builds WHERE id IN (SELECT id FROM builds WHERE final AND NOT holds_sandbox"
    " AND updated_at < %s ORDER BY updated_at LIMIT %s)"
)
# One build, if it is still at the version its deleter read (events go with it: ON DELETE CASCADE).
DELETE = "DELETE FROM builds WHERE id = %s AND version = %s"
# The newest build with this cache key that ended in the given (final) state.
FIND_CACHED = (
    f"SELECT {RECORD_COLUMNS} FROM builds WHERE cache_key = %s AND state = %s AND final"
    " ORDER BY updated_at DESC LIMIT 1"
)
# A fleet-wide turn: the row is written (one row changed) only when the last turn is old enough.
TAKE_TURN = (
    "INSERT INTO turns (name, taken_at, holder) VALUES (%s, %s, %s) ON CONFLICT (name)"
    " DO UPDATE SET taken_at = excluded.taken_at, holder = excluded.holder"
    " WHERE turns.taken_at <= %s"
)


def pending(applied: Iterable[int], where: str) -> list[Migration]:
    """The migrations still to apply, in order.

    A database migrated by a newer kiln is refused rather than used: this kiln would not know
    what the newer columns mean.
    """
    done = set(applied)
    unknown = sorted(v for v in done if v > LATEST_VERSION)
    if unknown:
        raise ConfigError(
            f"the store at {where} has schema version {unknown[-1]}, newer than this kiln knows"
            f" ({LATEST_VERSION})",
            hint="upgrade kiln, or point --store / KILN_STORE at another store",
        )
    return [m for m in MIGRATIONS if m.version not in done]
