"""One process's hold on one persisted build: its state writes, its event log, its lease.

A :class:`Session` is the driver's ``persist`` hook and the sink for the build's events. At every
transition it writes the state (compare-and-set on the store's version) and the events gathered
since the last write, in one store commit that also reports a cancel request, before the next
handler runs; handlers checkpoint the same way around a remote side effect (before a sandbox is
requested, once it exists, once the builder started). While a handler runs, a ticker beats every
``poll_s`` seconds with one store transaction: the commit of what changed (the builder's
delivered log lines), or else a lease renewal; both extend the lease and report a cancel
request made by another process. Losing the lease, or a compare-and-set, stops the build where
it stands without cleanup: the new owner carries on from the store. A store that cannot be
reached is retried for ``store_outage_s``; then the build stops at its last persisted point.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Mapping
from typing import Any

from kiln._logging import logger
from kiln._tasks import finish_despite_cancel
from kiln.durable._unrecorded import holds_sandbox
from kiln.errors import BuildHandedOver, KilnError, StoreOutage
from kiln.machine import BuildState, Driver, Event
from kiln.store import (
    LEASE_S,
    RENEW_EVERY_S,
    LeaseLost,
    Owner,
    StaleWriteError,
    Store,
    StoreUnavailable,
)

JsonObject = dict[str, Any]

# How often a running build looks at the store for a cancel request and checkpoints its state:
# a `kiln cancel` from another process takes effect within about this long, and a crash loses at
# most this much of a running phase's progress (its log lines, a builder pid just learned). Each
# beat is one transaction, so this is also what a running build costs the store.
POLL_S = 1.0

# Testing hook, not a user option: when set to N, the process SIGKILLs itself right after the
# N-th transition has been written to the store. The crash tests use it to stop a `kiln build`
# at every point of the machine and resume it from another process.
KILL_AFTER_TRANSITION_ENV = "KILN_TEST_KILL_AFTER_TRANSITION"

# A state write that fails because the store is unreachable (database down, disk full) is tried
# again with backoff for this long before the build stops. Well inside the builder sandbox's
# 300 s idle timeout, so the sandbox is still there for whoever continues the build; long enough
# to ride out a database restart or failover.
STORE_OUTAGE_S = 60.0
STORE_RETRY_FIRST_S = 0.25
STORE_RETRY_MAX_S = 5.0

LOGGER_NAME = "kiln.durable"


class Session:
    """Persist one build to ``store`` while this process owns it.

    A new build's record is created by :meth:`run`; for a build that already has one, the owner
    acquires (or claims) it first and passes its version to :meth:`adopt`.
    """

    # How long an unreachable store is retried before the build stops; a class attribute, so that
    # a service embedding kiln (or a test) can set it for every session at once.
    store_outage_s: float = STORE_OUTAGE_S

    def __init__(
        self,
        store: Store,
        *,
        owner: Owner | None = None,
        lease_s: float = LEASE_S,
        renew_every_s: float = RENEW_EVERY_S,
        poll_s: float = POLL_S,
        store_outage_s: float | None = None,
    ) -> None:
        self.store = store
        if store_outage_s is not None:
            self.store_outage_s = store_outage_s
        self.owner = owner or Owner.current()
        # The store version this session last wrote or acquired; None until the record exists.
        self._version: int | None = None
        self._lease_s = lease_s
        self._renew_every_s = renew_every_s
        self._poll_s = poll_s
        self._kill_after = _kill_after(os.environ)
        self._pending: list[tuple[str, JsonObject]] = []
        self._saved_json: str | None = None
        # The state the store last accepted: where a build stopped by a store outage resumes.
        self._saved_state: str | None = None
        # Whether the store held a cancel request when this session's last state write landed.
        self._cancel_seen = False
        self._lock = asyncio.Lock()
        self._stop_reason: KilnError | None = None
        self._driver_task: asyncio.Task[BuildState] | None = None
        self._persists = 0
        self._finals: frozenset[str] = frozenset()
        # Set once the build's record exists in the store: from then on `kiln resume` finds it.
        self.recorded = asyncio.Event()

    def adopt(self, version: int) -> None:
        """Continue an existing build that this session's owner has acquired at ``version``."""
        self._version = version
        self.recorded.set()

    # -- the hooks the Build plugs in -------------------------------------------------------

    def record(self, event: Event | tuple[str, JsonObject]) -> None:
        """Queue an event for the build's log; it is written with the next state write."""
        if isinstance(event, tuple):
            self._pending.append(event)
            return
        # The log's rows have their own time and belong to this build: the kind's fields suffice.
        self._pending.append((event.type, event.payload()))

    async def persist(self, state: BuildState) -> None:
        """The driver's hook: write the state and the queued events, and take up a cancel request
        found by that write (one store commit per transition)."""
        await self._write_now(state)
        self._persists += 1
        # The first write of a run records where it starts; the later ones follow transitions.
        transitions = self._persists - 1
        if self._kill_after is not None and transitions == self._kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        if self._cancel_seen:
            state.cancel_requested = True

    async def checkpoint(self, state: BuildState) -> None:
        """The handlers' hook: write the state now, mid-phase, after a remote side effect."""
        await self._write_now(state)

    async def _write_now(self, state: BuildState) -> None:
        """Write unless this session stopped: then raise why, so the driver goes no further.

        An unreachable store is retried with backoff for ``store_outage_s``; the handler that
        asked for the write waits meanwhile, holding its sandbox. If the store stays away the
        build stops where the store last saw it, and StoreOutage says how to continue."""
        delay = STORE_RETRY_FIRST_S
        give_up_at = time.monotonic() + self.store_outage_s
        while True:
            try:
                await self._write_once(state)
                return
            except StoreUnavailable as error:
                if time.monotonic() + delay > give_up_at:
                    raise self._outage(state, error) from None
                logger(LOGGER_NAME).warning(
                    "store unavailable, retrying", build_id=state.id, in_s=delay, error=str(error)
                )
            await asyncio.sleep(delay)
            delay = min(STORE_RETRY_MAX_S, delay * 2)

    async def _write_once(self, state: BuildState) -> None:
        async with self._lock:
            # Checked under the lock: a stop() that held it has already checkpointed.
            if self._stop_reason is not None:
                raise self._stop_reason
            await self._write(state, force=True)

    def _outage(self, state: BuildState, error: StoreUnavailable) -> StoreOutage:
        where = self._saved_state or state.state
        return StoreOutage(
            f"the store stayed unavailable for {self.store_outage_s:.0f}s ({error}); build"
            f" {state.id} stopped at its last persisted point, in state {where!r}, with its"
            " builder sandbox kept",
            hint=f"once the store is back, continue it with `kiln resume {state.id}`",
        )

    # -- running ----------------------------------------------------------------------------

    async def run(self, driver: Driver, state: BuildState, final_states: frozenset[str]) -> None:
        """Own the build, drive it to a final state (or until stopped), then give it up."""
        self._finals = final_states
        if state.state in final_states:
            return
        await self.open(state)
        try:
            await self._drive(driver, state)
        finally:
            with contextlib.suppress(KilnError):
                await self.store.release(state.id, self.owner)

    async def open(self, state: BuildState) -> None:
        """Create the build's record, owned by this session, unless it has one."""
        if self._version is None:
            await self._create(state)

    async def settle(self, state: BuildState, final_states: frozenset[str]) -> None:
        """Persist a build that reached a final state without being driven (served from the
        cache) with its queued events, then give it up."""
        self._finals = final_states
        await self.open(state)
        try:
            await self._write_now(state)
        finally:
            with contextlib.suppress(KilnError):
                await self.store.release(state.id, self.owner)

    async def stop(self, state: BuildState, reason: str) -> None:
        """Checkpoint the build and stop driving it, without cleanup, so it can be resumed."""
        async with self._lock:
            if self._stop_reason is not None:
                return
            with contextlib.suppress(KilnError):
                await self._write(state, force=False)
                await self.store.append_events(
                    state.id, [("handed_over", {"reason": reason, "state": state.state})]
                )
            self._stop_reason = BuildHandedOver(
                f"build {state.id} stopped in state {state.state!r}: {reason}",
                hint=f"it continues on `kiln resume {state.id}` or in a worker",
            )
        if self._driver_task is not None:
            self._driver_task.cancel()

    async def _create(self, state: BuildState) -> None:
        await self.store.create(
            id=state.id,
            name=state.plan.name,
            state=state.state,
            data=state.to_dict(),
            sandbox_id=state.sandbox_id,
            schema_version=state.schema_version,
            cache_key=_cache_key(state),
        )
        record = await self.store.acquire(state.id, self.owner, lease_s=self._lease_s)
        self._version = record.version
        self.recorded.set()

    async def _drive(self, driver: Driver, state: BuildState) -> None:
        self._driver_task = asyncio.create_task(driver.run(state))
        ticker = asyncio.create_task(self._tick(driver, state))
        try:
            await self._driver_task
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._stop_reason is None or (task is not None and task.cancelling()):
                raise
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        if self._stop_reason is not None:
            raise self._stop_reason

    async def _tick(self, driver: Driver, state: BuildState) -> None:
        # Each beat is one store transaction: the checkpoint, or else the lease renewal, and
        # either one answers whether a cancel was requested and extends the lease.
        beat_s = min(self._poll_s, self._renew_every_s)
        while True:
            await asyncio.sleep(beat_s)
            try:
                await self._checkpoint(driver, state)
            except (StaleWriteError, LeaseLost) as error:
                await self.stop(state, f"ownership lost ({error})")
                return
            except StoreUnavailable as error:
                # The next tick or transition tries again; the lease outlives a short outage.
                logger(LOGGER_NAME).warning(
                    "store unavailable", build_id=state.id, error=str(error)
                )

    async def _checkpoint(self, driver: Driver, state: BuildState) -> None:
        async with self._lock:
            if self._stop_reason is not None:
                return
            if not await self._write(state, force=False):
                self._cancel_seen = await self.store.renew(
                    state.id, self.owner, lease_s=self._lease_s
                )
        if self._cancel_seen and not state.cancel_requested:
            driver.cancel()

    async def _write(self, state: BuildState, *, force: bool) -> bool:
        """Save the state with the queued events in one commit, which also extends the lease,
        when anything changed (always when ``force``); False when there was nothing to write.

        The state and the events are taken in one synchronous step, so the log written never
        runs ahead of the state (``output_events_delivered``) that says how much was delivered.
        A cancel does not cut the write short: the store would move to a new version while this
        session kept the old one, and its next write would be refused as stale. The write lands,
        then the cancel goes on.
        """
        text = state.to_json()
        if not (force or self._pending or text != self._saved_json):
            return False
        data = state.to_dict()
        events, self._pending = self._pending, []
        try:
            await finish_despite_cancel(self._commit(state, data, text, events))
        except StoreUnavailable:
            # Nothing landed: the events go out with the next write that does.
            self._pending[:0] = events
            raise
        return True

    async def _commit(
        self,
        state: BuildState,
        data: JsonObject,
        text: str,
        events: list[tuple[str, JsonObject]],
    ) -> None:
        assert self._version is not None
        committed = await self.store.commit_transition(
            state.id,
            expected_version=self._version,
            state=str(data["state"]),
            data=data,
            sandbox_id=data.get("sandbox_id"),
            final=data["state"] in self._finals,
            events=events,
            schema_version=int(data["schema_version"]),
            holds_sandbox=holds_sandbox(data, time.time()),
            lease_s=self._lease_s,
            cache_key=_cache_key(state),
        )
        self._version = committed.version
        self._cancel_seen = committed.cancel_requested
        self._saved_json = text
        self._saved_state = str(data["state"])


def _cache_key(state: BuildState) -> str | None:
    return state.cache.lookup if state.cache is not None else None


def _kill_after(env: Mapping[str, str]) -> int | None:
    raw = env.get(KILL_AFTER_TRANSITION_ENV, "").strip()
    return int(raw) if raw.isdigit() else None
