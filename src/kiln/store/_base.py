"""What every store shares: the records, the protocol, the errors and the ownership rules.

The backends differ only in how they keep rows and how they make a read-decide-write atomic; the
decisions themselves (may this worker take the build? which events survive the bound?) are pure
functions here, so memory, SQLite and PostgreSQL cannot disagree about them.
"""

from __future__ import annotations

import builtins
import datetime
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs

from kiln.errors import StaleWriteError, UsageError

Clock = Callable[[], float]
JsonObject = dict[str, Any]

# The version of the layout of ``data`` when the writer does not say: the store treats the state as
# opaque, so the number belongs to whoever writes the state and is only carried here.
DEFAULT_SCHEMA_VERSION = 1

# A build keeps its first HEAD_EVENTS and last TAIL_EVENTS events. The head holds the plan and the
# first steps, the tail holds what happened just before a failure; the middle of a long build log
# is what a reader can most afford to lose, and it is what would otherwise grow without bound.
HEAD_EVENTS = 500
TAIL_EVENTS = 5000

# How many candidates an ambiguous id prefix names; enough to pick from, short enough to read.
AMBIGUOUS_SHOWN = 5

# Names a process for the lifetime of the interpreter, so that two ``Owner.current()`` calls in one
# process are the same owner, while a restarted process with a recycled pid is a different one.
_PROCESS_TOKEN = uuid.uuid4().hex[:12]


@attrs.frozen
class Owner:
    """The process that runs a build: its host, pid and a worker id unique to that process."""

    host: str = attrs.field(validator=attrs.validators.min_len(1))
    # Positive: os.kill(0 or a negative pid) would address process groups, not one process.
    pid: int = attrs.field(validator=attrs.validators.gt(0))
    worker_id: str = attrs.field(validator=attrs.validators.min_len(1))

    @classmethod
    def current(cls, worker_id: str | None = None) -> Owner:
        """This process, under ``worker_id`` or a per-process default."""
        return cls(
            host=socket.gethostname(),
            pid=os.getpid(),
            worker_id=worker_id or f"kiln-{_PROCESS_TOKEN}",
        )

    def describe(self) -> str:
        return f"worker {self.worker_id} (pid {self.pid} on {self.host})"


@attrs.frozen
class BuildRecord:
    """One persisted build: the machine's state (opaque JSON) plus what the store itself needs.

    ``version`` is the compare-and-set counter: every state write and every change of owner moves
    it, so a writer holding an old version (a stale process, a former owner) cannot overwrite newer
    state. ``events_dropped`` counts events lost from the middle of the log to its bound.
    """

    id: str
    name: str
    state: str
    version: int
    schema_version: int
    data: JsonObject
    sandbox_id: str | None
    owner: Owner | None
    lease_expires_at: float | None
    cancel_requested: bool
    created_at: float
    updated_at: float
    final: bool
    events_dropped: int = 0
    # Whether the build may have a builder sandbox still running (the reaper's index): set by its
    # writers, cleared by the reaper once nothing is left to watch.
    holds_sandbox: bool = False

    def summary(self) -> JsonObject:
        """The fields ``kiln ls --json`` prints."""
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "sandbox_id": self.sandbox_id,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@attrs.frozen
class EventRow:
    """One entry of a build's append-only event log; ``seq`` counts from 1 and has gaps where the
    bound dropped events."""

    seq: int
    time: float
    kind: str
    data: JsonObject


@attrs.frozen
class Committed:
    """What :meth:`Store.commit_transition` leaves behind: the build's new version, and whether a
    cancel had been requested when the write landed (read in the same transaction)."""

    version: int
    cancel_requested: bool


class Store(Protocol):
    """Durable builds: state with compare-and-set, bounded event logs, cancel requests, ownership.

    Every write to a build (``save``, ownership changes, events) is atomic against other writers,
    in this process and in others.
    """

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
        """Insert a new build at version 1; a duplicate id is a UsageError. ``cache_key`` is
        what :meth:`find_cached` finds it by (None: it is no cache candidate)."""
        ...

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
        """Write the state if the stored version is ``expected_version``; return the new version.

        StaleWriteError when the version moved or the build already finished."""
        ...

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
        """``save`` and ``append_events`` as one atomic write, also reading the cancel flag,
        and extending the lease to now + ``lease_s`` when given (the writer owns the build: the
        version it wrote at says so), and setting the cache key when one is given.

        A transition's whole persist in one round trip and one commit: either the state and its
        events are both written or, on StaleWriteError, neither is."""
        ...

    async def get(self, id: str) -> BuildRecord | None:
        """The build with this id, else the one build whose id starts with it, else None.

        AmbiguousBuildId when the prefix matches several builds."""
        ...

    async def list(
        self, *, state: str | None = None, limit: int = 100
    ) -> builtins.list[BuildRecord]:
        """Builds, newest first, optionally only those in ``state``."""
        ...

    async def find_cached(self, cache_key: str, *, state: str) -> BuildRecord | None:
        """The most recently finished build with this cache key that ended in ``state``."""
        ...

    async def append_events(self, id: str, events: Sequence[tuple[str, JsonObject]]) -> None:
        """Append ``(kind, data)`` events, keeping the head and tail of the log.

        Each call is one durable write: batch build-log lines rather than appending them singly."""
        ...

    async def events(self, id: str, *, after_seq: int = 0) -> builtins.list[EventRow]:
        """The kept events with ``seq > after_seq``, in order."""
        ...

    async def request_cancel(self, id: str) -> bool:
        """Record a cancel request (idempotent); False when the build had already finished."""
        ...

    async def acquire(self, id: str, owner: Owner, *, lease_s: float) -> BuildRecord:
        """Make ``owner`` the owner for ``lease_s`` seconds; OwnedElsewhere if a live owner holds it."""
        ...

    async def renew(self, id: str, owner: Owner, *, lease_s: float) -> bool:
        """Extend the lease to now + ``lease_s`` and say whether a cancel was requested;
        LeaseLost if ``owner`` no longer holds it."""
        ...

    async def release(self, id: str, owner: Owner) -> None:
        """Give the build up; does nothing if ``owner`` does not hold it."""
        ...

    async def claim_next(self, owner: Owner, *, lease_s: float) -> BuildRecord | None:
        """Take the oldest unfinished build nobody live holds, or None."""
        ...

    async def sandbox_holders(self, *, limit: int = 1000) -> builtins.list[BuildRecord]:
        """The builds marked as maybe holding a builder sandbox, least recently updated first
        (read by index: the reaper never reads the whole history)."""
        ...

    async def forget_sandbox(self, id: str) -> None:
        """Clear the mark: the reaper found nothing left to watch (the version does not move)."""
        ...

    async def prune(self, *, finished_before: float, limit: int = 1000) -> int:
        """Delete up to ``limit`` builds (with their events) that finished before the time given
        and hold no sandbox; returns how many."""
        ...

    async def delete(self, id: str, *, expected_version: int) -> bool:
        """Delete the build with this exact id, with its events, if its version is still
        ``expected_version``; False when it moved (another process took the build or wrote to it
        since the caller read it: the caller's reasons to delete it may no longer hold).

        BuildNotFound when no build has this id. Whether a build may go is the caller's decision,
        made on the record it read at that version (``kiln rm`` never removes a running one)."""
        ...

    async def take_turn(self, name: str, holder: str, *, every_s: float) -> bool:
        """True for at most one caller per ``every_s`` seconds across every process sharing the
        store: fleet-wide chores (reaping, pruning) run once per period, not once per worker."""
        ...

    async def close(self) -> None: ...


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        # It exists; it just belongs to another user.
        return True
    return True


def owner_holds(
    owner: Owner | None, lease_expires_at: float | None, claimant: Owner, now: float
) -> bool:
    """Whether ``owner`` still keeps ``claimant`` from taking the build.

    An expired lease frees the build everywhere. On the owner's own host we can do better than
    waiting: a pid that no longer exists cannot be running the build, so it is free at once.
    """
    if owner is None or owner == claimant:
        return False
    if lease_expires_at is None or lease_expires_at <= now:
        return False
    return not (owner.host == claimant.host and not pid_alive(owner.pid))


# A build's version when created; anything that ever owned it moved it on.
FIRST_VERSION = 1


def started(record: BuildRecord) -> bool:
    """Whether a process has run the build before: a claim takes these first, so that a build
    whose owner died (and whose builder sandbox may be running) never waits behind new work."""
    return record.version > FIRST_VERSION


def claim_order(record: BuildRecord) -> tuple[bool, float]:
    """The order ``claim_next`` takes claimable builds in (ties: the order they were created)."""
    return (not started(record), record.created_at)


def claimable(record: BuildRecord, claimant: Owner, now: float) -> bool:
    """Whether ``claim_next`` may hand this build to ``claimant``: unfinished and not held by a
    live owner. The claimant's own build counts as held while its lease runs (it is running it);
    once the lease ran out the claimant stopped renewing it, because it stopped running it and
    could not release it (the store was down), so it takes it back like anyone else would."""
    if record.final:
        return False
    if record.owner == claimant:
        return record.lease_expires_at is None or record.lease_expires_at <= now
    return not owner_holds(record.owner, record.lease_expires_at, claimant, now)


def claimed_version(record: BuildRecord, claimant: Owner, *, claim: bool) -> int:
    """The version a build gets when ``claimant`` takes it. A change of owner moves it, so the
    previous owner's next save is refused; so does every claim, even of the claimant's own build:
    should an old run of it still be alive in the claimant's process, its next write is refused."""
    return record.version + 1 if claim or record.owner != claimant else record.version


@attrs.frozen
class EventPlan:
    """How one append changes a build's log under the bound."""

    first_seq: int
    keep: tuple[bool, ...]  # one per appended event: does it survive the bound?
    drop_from: int  # stored events with drop_from <= seq <= drop_to are deleted
    drop_to: int
    total: int
    dropped: int


def plan_events(
    old_total: int, count: int, *, head: int = HEAD_EVENTS, tail: int = TAIL_EVENTS
) -> EventPlan:
    """Decide which of ``count`` new events are stored and which stored ones go.

    Events in the middle of a single large batch are never written at all, rather than written
    and deleted in the same transaction.
    """
    total = old_total + count
    tail_start = total - tail + 1  # the first seq of the kept tail
    first = old_total + 1
    keep = tuple(seq <= head or seq >= tail_start for seq in range(first, total + 1))
    return EventPlan(
        first_seq=first,
        keep=keep,
        drop_from=head + 1,
        drop_to=min(tail_start - 1, old_total),
        total=total,
        dropped=max(0, total - head - tail),
    )


def check_limit(limit: int) -> None:
    if limit < 1:
        raise UsageError(f"list limit must be at least 1, not {limit}")


def check_lease(lease_s: float) -> None:
    if not lease_s > 0:
        raise UsageError(f"a lease must last a positive number of seconds, not {lease_s}")


def duplicate_build(build_id: str) -> UsageError:
    return UsageError(
        f"a build with id {build_id!r} already exists",
        hint="build ids are unique; let kiln generate one",
    )


def stale_write(id: str, expected_version: int, current: BuildRecord) -> StaleWriteError:
    """The error for a conditional write that matched no row, given the row as it is now."""
    reason = "build finished" if current.final else "version moved"
    return StaleWriteError(id, expected=expected_version, actual=current.version, reason=reason)


class Row(Protocol):
    """A database row addressed by column name (``sqlite3.Row``, a psycopg dict row)."""

    def __getitem__(self, key: str, /) -> Any: ...


def record_from_row(row: Row, data: JsonObject) -> BuildRecord:
    """A record from a database row (column names as in the ``builds`` table)."""
    owner = (
        Owner(host=row["owner_host"], pid=int(row["owner_pid"]), worker_id=row["owner_worker"])
        if row["owner_host"] is not None
        else None
    )
    return BuildRecord(
        id=row["id"],
        name=row["name"],
        state=row["state"],
        version=int(row["version"]),
        schema_version=int(row["schema_version"]),
        data=data,
        sandbox_id=row["sandbox_id"],
        owner=owner,
        lease_expires_at=row["lease_expires_at"],
        cancel_requested=bool(row["cancel_requested"]),
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
        final=bool(row["final"]),
        events_dropped=int(row["events_dropped"]),
        holds_sandbox=bool(row["holds_sandbox"]),
    )


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC).isoformat(timespec="seconds")
