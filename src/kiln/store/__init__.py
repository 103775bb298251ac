"""Durable builds: where a build's state, event log, cancel request and owner are kept.

Three stores behind one :class:`Store` protocol, chosen by URL (``--store``, ``$KILN_STORE``)::

    memory://                          in-process, for tests
    sqlite:///relative/builds.db       the default, at $XDG_STATE_HOME/kiln/builds.db;
    sqlite:////absolute/builds.db      several kiln processes on one machine
    postgresql://user@host/db          many workers on many machines

The machine's state is stored as an opaque JSON object with a compare-and-set version, so a stale
writer cannot move a build backwards. A build is owned by one process at a time: the owner holds a
lease it renews; a build whose lease expired, or whose owner process is gone from this host, is
taken over by the next ``acquire`` or ``claim_next``.
"""

from typing import TYPE_CHECKING, Any

from kiln.errors import (
    AmbiguousBuildId,
    BuildNotFound,
    LeaseLost,
    OwnedElsewhere,
    StaleWriteError,
    StoreUnavailable,
)
from kiln.store._base import (
    DEFAULT_SCHEMA_VERSION,
    HEAD_EVENTS,
    TAIL_EVENTS,
    BuildRecord,
    Committed,
    EventRow,
    Owner,
    Store,
    owner_holds,
    pid_alive,
)
from kiln.store._lease import LEASE_S, RENEW_EVERY_S, LeaseKeeper
from kiln.store._memory import MemoryStore
from kiln.store._open import open_store
from kiln.store._psycopg import POSTGRES_EXTRA, import_psycopg
from kiln.store._sqlite import SQLiteStore
from kiln.store._urls import ACCEPTED_FORMS, STORE_ENV, default_store_url, redact_url

if TYPE_CHECKING:
    from kiln.store._postgres import PostgresStore


def __getattr__(name: str) -> Any:
    # PostgresStore loads psycopg, an extra (kiln[postgres]): only when it is asked for.
    if name != "PostgresStore":
        raise AttributeError(f"module 'kiln.store' has no attribute {name!r}")
    import_psycopg()
    from kiln.store._postgres import PostgresStore

    globals()[name] = PostgresStore
    return PostgresStore


__all__ = [
    "ACCEPTED_FORMS",
    "DEFAULT_SCHEMA_VERSION",
    "HEAD_EVENTS",
    "LEASE_S",
    "POSTGRES_EXTRA",
    "RENEW_EVERY_S",
    "STORE_ENV",
    "TAIL_EVENTS",
    "AmbiguousBuildId",
    "BuildNotFound",
    "BuildRecord",
    "Committed",
    "EventRow",
    "LeaseKeeper",
    "LeaseLost",
    "MemoryStore",
    "OwnedElsewhere",
    "Owner",
    "PostgresStore",
    "SQLiteStore",
    "StaleWriteError",
    "Store",
    "StoreUnavailable",
    "default_store_url",
    "open_store",
    "owner_holds",
    "pid_alive",
    "redact_url",
]
