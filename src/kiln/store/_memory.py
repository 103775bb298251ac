"""An in-process store for tests and embedding: nothing survives the process.

Every method body runs without awaiting, so on one event loop each operation is atomic, which is
all the atomicity a store living in one process needs.
"""

from __future__ import annotations

import builtins
import copy
import time
from collections.abc import Sequence

import attrs

from kiln.errors import AmbiguousBuildId, BuildNotFound, LeaseLost, OwnedElsewhere, StaleWriteError
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
)


class MemoryStore:
    """A :class:`~kiln.store.Store` kept in dictionaries."""

    def __init__(
        self,
        *,
        clock: Clock = time.time,
        head_events: int = HEAD_EVENTS,
        tail_events: int = TAIL_EVENTS,
    ) -> None:
        self._clock = clock
        self._head = head_events
        self._tail = tail_events
        self._builds: dict[str, BuildRecord] = {}
        self._events: dict[str, builtins.list[EventRow]] = {}
        self._event_totals: dict[str, int] = {}
        self._turns: dict[str, float] = {}
        # Each build's cache key, the column the databases keep beside the record.
        self._cache_keys: dict[str, str] = {}

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
        if id in self._builds:
            raise duplicate_build(id)
        if cache_key is not None:
            self._cache_keys[id] = cache_key
        now = self._clock()
        record = BuildRecord(
            id=id,
            name=name,
            state=state,
            version=1,
            schema_version=schema_version,
            data=copy.deepcopy(data),
            sandbox_id=sandbox_id,
            owner=None,
            lease_expires_at=None,
            cancel_requested=False,
            created_at=now,
            updated_at=now,
            final=False,
        )
        self._builds[id] = record
        self._events[id] = []
        self._event_totals[id] = 0
        return _copy(record)

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
        record = self._require(id)
        if record.version != expected_version:
            raise StaleWriteError(
                id, expected=expected_version, actual=record.version, reason="version moved"
            )
        if record.final:
            raise StaleWriteError(
                id, expected=expected_version, actual=record.version, reason="build finished"
            )
        self._builds[id] = attrs.evolve(
            record,
            state=state,
            data=copy.deepcopy(data),
            sandbox_id=sandbox_id,
            final=final,
            schema_version=schema_version,
            version=record.version + 1,
            updated_at=self._clock(),
            holds_sandbox=holds_sandbox,
        )
        return record.version + 1

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
        # The two writes never suspend, so nothing runs between them: together they are atomic,
        # and a refused save leaves the log untouched. Reusing them keeps one copy of each rule.
        version = await self.save(
            id,
            expected_version=expected_version,
            state=state,
            data=data,
            sandbox_id=sandbox_id,
            final=final,
            schema_version=schema_version,
            holds_sandbox=holds_sandbox,
        )
        if events:
            await self.append_events(id, events)
        if cache_key is not None:
            self._cache_keys[id] = cache_key
        if lease_s is not None:
            self._builds[id] = attrs.evolve(
                self._builds[id], lease_expires_at=self._clock() + lease_s
            )
        return Committed(version=version, cancel_requested=self._builds[id].cancel_requested)

    async def get(self, id: str) -> BuildRecord | None:
        if not id:
            return None
        if id in self._builds:
            return _copy(self._builds[id])
        matches = sorted(key for key in self._builds if key.startswith(id))
        if len(matches) > 1:
            raise AmbiguousBuildId(id, matches[:AMBIGUOUS_SHOWN])
        return _copy(self._builds[matches[0]]) if matches else None

    async def list(
        self, *, state: str | None = None, limit: int = 100
    ) -> builtins.list[BuildRecord]:
        check_limit(limit)
        # Insertion order breaks ties between builds created within one clock tick.
        newest_first = reversed(builtins.list(self._builds.values()))
        chosen = [r for r in newest_first if state is None or r.state == state]
        chosen.sort(key=lambda r: r.created_at, reverse=True)
        return [_copy(r) for r in chosen[:limit]]

    async def find_cached(self, cache_key: str, *, state: str) -> BuildRecord | None:
        found = [
            record
            for id, key in self._cache_keys.items()
            if key == cache_key
            and (record := self._builds.get(id)) is not None
            and record.final
            and record.state == state
        ]
        newest = max(found, key=lambda record: record.updated_at, default=None)
        return _copy(newest) if newest is not None else None

    async def append_events(self, id: str, events: Sequence[tuple[str, JsonObject]]) -> None:
        record = self._require(id)
        plan = plan_events(self._event_totals[id], len(events), head=self._head, tail=self._tail)
        now = self._clock()
        log = [e for e in self._events[id] if not plan.drop_from <= e.seq <= plan.drop_to]
        for offset, ((kind, data), kept) in enumerate(zip(events, plan.keep, strict=True)):
            if kept:
                log.append(EventRow(plan.first_seq + offset, now, kind, copy.deepcopy(data)))
        self._events[id] = log
        self._event_totals[id] = plan.total
        self._builds[id] = attrs.evolve(record, events_dropped=plan.dropped)

    async def events(self, id: str, *, after_seq: int = 0) -> builtins.list[EventRow]:
        self._require(id)
        return [copy.deepcopy(e) for e in self._events[id] if e.seq > after_seq]

    async def request_cancel(self, id: str) -> bool:
        record = self._require(id)
        if record.final:
            return False
        self._builds[id] = attrs.evolve(record, cancel_requested=True)
        return True

    async def acquire(self, id: str, owner: Owner, *, lease_s: float) -> BuildRecord:
        check_lease(lease_s)
        record = self._require(id)
        now = self._clock()
        if record.owner is not None and owner_holds(
            record.owner, record.lease_expires_at, owner, now
        ):
            raise OwnedElsewhere(id, record.owner, record.lease_expires_at)
        return _copy(self._take(record, owner, now + lease_s))

    async def renew(self, id: str, owner: Owner, *, lease_s: float) -> bool:
        check_lease(lease_s)
        record = self._require(id)
        if record.owner != owner:
            raise LeaseLost(id, owner, record.owner)
        self._builds[id] = attrs.evolve(record, lease_expires_at=self._clock() + lease_s)
        return record.cancel_requested

    async def release(self, id: str, owner: Owner) -> None:
        record = self._require(id)
        if record.owner == owner:
            self._builds[id] = attrs.evolve(record, owner=None, lease_expires_at=None)

    async def claim_next(self, owner: Owner, *, lease_s: float) -> BuildRecord | None:
        check_lease(lease_s)
        now = self._clock()
        # sorted() is stable: ties stay in creation order.
        for record in sorted(self._builds.values(), key=claim_order):
            if claimable(record, owner, now):
                return _copy(self._take(record, owner, now + lease_s, claim=True))
        return None

    async def sandbox_holders(self, *, limit: int = 1000) -> builtins.list[BuildRecord]:
        check_limit(limit)
        holders = sorted(
            (r for r in self._builds.values() if r.holds_sandbox), key=lambda r: r.updated_at
        )
        return [_copy(r) for r in holders[:limit]]

    async def forget_sandbox(self, id: str) -> None:
        self._builds[id] = attrs.evolve(self._require(id), holds_sandbox=False)

    async def prune(self, *, finished_before: float, limit: int = 1000) -> int:
        check_limit(limit)
        old = sorted(
            (
                r
                for r in self._builds.values()
                if r.final and not r.holds_sandbox and r.updated_at < finished_before
            ),
            key=lambda r: r.updated_at,
        )[:limit]
        for record in old:
            del self._builds[record.id], self._events[record.id], self._event_totals[record.id]
            self._cache_keys.pop(record.id, None)
        return len(old)

    async def delete(self, id: str, *, expected_version: int) -> bool:
        if self._require(id).version != expected_version:
            return False
        del self._builds[id], self._events[id], self._event_totals[id]
        self._cache_keys.pop(id, None)
        return True

    async def take_turn(self, name: str, holder: str, *, every_s: float) -> bool:
        now = self._clock()
        last = self._turns.get(name)
        if last is not None and last > now - every_s:
            return False
        self._turns[name] = now
        return True

    async def close(self) -> None:
        """Nothing to close; the data lives as long as the object."""

    def _take(
        self, record: BuildRecord, owner: Owner, lease_expires_at: float, *, claim: bool = False
    ) -> BuildRecord:
        version = claimed_version(record, owner, claim=claim)
        taken = attrs.evolve(
            record, owner=owner, lease_expires_at=lease_expires_at, version=version
        )
        self._builds[record.id] = taken
        return taken

    def _require(self, id: str) -> BuildRecord:
        try:
            return self._builds[id]
        except KeyError:
            raise BuildNotFound(id) from None


def _copy(record: BuildRecord) -> BuildRecord:
    # Callers may mutate the dict they get; the stored state must not change with it.
    return attrs.evolve(record, data=copy.deepcopy(record.data))
