"""Orphaned builder sandboxes: the store knows them, and no live build will ever delete them.

Two kinds: a build that ended without deleting its sandbox (its cleanup's deletes all failed),
and a build nobody owns that nobody has touched for ``abandoned_after_s`` (its process crashed
and no one resumed it). The grace period keeps the reaper off a build whose owner died a moment
ago and which a worker or ``kiln resume`` is about to take over. Before touching an abandoned
build the reaper acquires it, so a resumer and the reaper cannot act on it at once; the build
then ends as failed, since its sandbox is gone.

Records carry the machine their build runs (``BuildState.machine``): a build on the Image
Service (states/cas.toml) has no builder sandbox of its own to delete (the service runs and ends
its builder), so it is never reaped; what it may leave behind is its build on the service, which
only its own machine's release state cancels. :func:`unattended_remote_builds` lists those that
nobody runs, for `kiln reap` to say how to end them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import attrs
import httpx

from kiln.api import LifecycleClient
from kiln.durable._resume import load_state
from kiln.durable._unrecorded import UnrecordedSandbox, holds_sandbox, unrecorded_sandboxes
from kiln.errors import KilnError, UnreadableBuild
from kiln.machine import (
    BUILD_MACHINE,
    CAS_MACHINE,
    BuildState,
    ErrorRecord,
    MachineSpec,
    Secrets,
    Services,
    TransitionEvent,
    Trigger,
    event_entry,
    intervene,
    load_machine_spec,
)
from kiln.store import (
    LEASE_S,
    BuildRecord,
    OwnedElsewhere,
    Owner,
    StaleWriteError,
    Store,
    owner_holds,
)

# Long enough that a stalled build is picked up by a worker or a `kiln resume` first; short
# enough that a leaked sandbox does not run (and cost) for long.
ABANDONED_AFTER_S = 600.0
# The builds marked as maybe holding a sandbox are read (by index), not the whole history.
SCAN_LIMIT = 10_000
REAPED = "Reaped"


@attrs.frozen
class Orphan:
    """A builder sandbox to delete, and the build that left it."""

    build_id: str
    name: str
    state: str
    sandbox_id: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return attrs.asdict(self)


async def reap(
    store: Store,
    *,
    dry_run: bool = False,
    secrets: Secrets | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    abandoned_after_s: float = ABANDONED_AFTER_S,
    clock: Callable[[], float] = time.time,
) -> list[Orphan]:
    """Find the orphaned sandboxes that still exist and (unless ``dry_run``) delete them."""
    reaper = _Reaper(store, secrets or Secrets(), transport)
    try:
        found: list[Orphan] = []
        for record in await store.sandbox_holders(limit=SCAN_LIMIT):
            now = clock()
            orphan = await reaper.inspect(record, now, abandoned_after_s)
            if orphan is not None and (dry_run or await reaper.delete(record, orphan)):
                found.append(orphan)
            if not dry_run and _settled(record, now):
                await store.forget_sandbox(record.id)
        return found
    finally:
        await reaper.aclose()


@attrs.frozen
class UnattendedRemoteBuild:
    """An unfinished build on the Image Service that no live process runs."""

    build_id: str
    name: str
    state: str
    remote_build_id: str | None

    def describe(self) -> str:
        remote = f" {self.remote_build_id}" if self.remote_build_id else ""
        return (
            f"nobody runs it ({self.state}) and its build{remote} on the Image Service may still"
            " run; it holds no builder sandbox of kiln's to delete. `kiln resume"
            f" {self.build_id}` continues it; `kiln cancel {self.build_id}` then `kiln resume"
            f" {self.build_id}` cancels it on the service"
        )

    def to_dict(self) -> dict[str, str | None]:
        return attrs.asdict(self)


def machine_of(record: BuildRecord) -> str:
    """The machine a record's build runs, read from its raw data (the build machine for records
    written before there was another, or whose data names none)."""
    machine = record.data.get("machine")
    return machine if isinstance(machine, str) else BUILD_MACHINE


async def unattended_remote_builds(
    store: Store, *, clock: Callable[[], float] = time.time, limit: int = SCAN_LIMIT
) -> list[UnattendedRemoteBuild]:
    """Unfinished Image Service builds no live process runs (nothing is done to them)."""
    now = clock()
    found: list[UnattendedRemoteBuild] = []
    for record in await store.list(limit=limit):
        if record.final or machine_of(record) != CAS_MACHINE or _held_live(record, now):
            continue
        remote = record.data.get("build_id")
        found.append(
            UnattendedRemoteBuild(
                build_id=record.id,
                name=record.name,
                state=record.state,
                remote_build_id=remote if isinstance(remote, str) else None,
            )
        )
    return found


def _settled(record: BuildRecord, now: float) -> bool:
    """Whether a finished build leaves nothing to watch: its sandbox is deleted (by it, or just
    now by the reaper) or gone, and no unrecorded one can still be running. An unfinished
    build's own writes keep its mark up to date."""
    return record.final and not unrecorded_sandboxes(record, now)


async def unrecorded(
    store: Store, *, clock: Callable[[], float] = time.time
) -> list[UnrecordedSandbox]:
    """Sandboxes builds may have left without recording their ids, not yet ended on their own;
    kiln cannot delete them (see :mod:`kiln.durable._unrecorded`), only report them."""
    now = clock()
    found: list[UnrecordedSandbox] = []
    for record in await store.sandbox_holders(limit=SCAN_LIMIT):
        found += unrecorded_sandboxes(record, now, in_flight=not _held_live(record, now))
    return found


def _held_live(record: BuildRecord, now: float) -> bool:
    """Whether a live process (this one included) runs the build."""
    if record.final:
        return False
    claimant = Owner.current()
    # This very process running it counts as live too (owner_holds leaves the owner itself out).
    return record.owner == claimant or owner_holds(
        record.owner, record.lease_expires_at, claimant, now
    )


def _reason(record: BuildRecord, state: BuildState, now: float, grace_s: float) -> str | None:
    """Why the build's sandbox is an orphan, or None when it is not (or there is none)."""
    if state.sandbox_id is None or state.sandbox_deleted:
        return None
    if record.final:
        return f"the build ended ({record.state}) without deleting it"
    if _held_live(record, now):
        return None
    idle = now - record.updated_at
    if idle < grace_s:
        return None
    return f"nobody runs the build and it has not moved for {idle:.0f}s (abandoned in {record.state!r})"


class _Reaper:
    def __init__(
        self, store: Store, secrets: Secrets, transport: httpx.AsyncBaseTransport | None
    ) -> None:
        self._store = store
        self._secrets = secrets
        self._transport = transport
        self._spec = load_machine_spec()
        # One set of API clients per distinct target: builds may name different API URLs.
        self._services: dict[tuple[object, ...], Services] = {}

    async def inspect(self, record: BuildRecord, now: float, grace_s: float) -> Orphan | None:
        # Most builds never had a sandbox or deleted it: decided from the raw record, unloaded.
        if record.sandbox_id is None or record.data.get("sandbox_deleted"):
            return None
        if machine_of(record) != BUILD_MACHINE:
            return None  # its machine holds no builder sandbox of kiln's (states/cas.toml)
        try:
            state = load_state(record)
        except UnreadableBuild:
            return None  # nothing to learn its sandbox from; `kiln status` still shows it
        reason = _reason(record, state, now, grace_s)
        if reason is None or not await self._exists(state):
            return None
        return Orphan(
            build_id=record.id,
            name=record.name,
            state=record.state,
            sandbox_id=state.need_sandbox_id(),
            reason=reason,
        )

    async def delete(self, record: BuildRecord, orphan: Orphan) -> bool:
        """Delete the sandbox; an abandoned build is taken over first and ends as failed.

        False when the build was taken over by someone else in the meantime."""
        if record.final:
            await self._delete_sandbox(load_state(record))
            await self._store.append_events(record.id, [_reaped_entry(orphan)])
            return True
        owner = Owner.current()
        try:
            held = await self._store.acquire(record.id, owner, lease_s=LEASE_S)
        except OwnedElsewhere:
            return False
        try:
            # Taking the build over moves its version by one; any more means it moved on
            # (someone resumed it) between the scan and the acquire.
            taken_over = record.version if record.owner == owner else record.version + 1
            if held.version != taken_over:
                return False
            state = load_state(held)
            await self._delete_sandbox(state)
            transition = await _fail_reaped(self._spec, state, orphan)
            await self._store.save(
                record.id,
                expected_version=held.version,
                state=state.state,
                data=state.to_dict(),
                sandbox_id=state.sandbox_id,
                final=state.state in self._spec.finals,
                schema_version=state.schema_version,
                holds_sandbox=holds_sandbox(state.to_dict(), time.time()),
            )
            await self._store.append_events(
                record.id, [event_entry(transition), _reaped_entry(orphan)]
            )
        except StaleWriteError:
            return False
        finally:
            with contextlib.suppress(KilnError):
                await self._store.release(record.id, owner)
        return True

    async def _exists(self, state: BuildState) -> bool:
        return not await self._lifecycle(state).is_gone(state.need_sandbox_id())

    async def _delete_sandbox(self, state: BuildState) -> None:
        await self._lifecycle(state).ensure_deleted(state.need_sandbox_id())
        state.sandbox_deleted = True

    def _lifecycle(self, state: BuildState) -> LifecycleClient:
        options = state.options
        key = (options.api_url, options.namespace, options.organization_id, options.project_id)
        services = self._services.get(key)
        if services is None:
            services = Services(
                spec=self._spec,
                emit_event=lambda _event: None,
                secrets=self._secrets,
                transport=self._transport,
            )
            self._services[key] = services
        return services.lifecycle(state)

    async def aclose(self) -> None:
        for services in self._services.values():
            await services.aclose()


async def _fail_reaped(spec: MachineSpec, state: BuildState, orphan: Orphan) -> TransitionEvent:
    """End the abandoned build by the declared reaped edge; the transition's event."""
    state.error = ErrorRecord(
        kind=REAPED,
        message=(
            f"build abandoned in {orphan.state!r}: its builder sandbox {orphan.sandbox_id}"
            " was deleted by `kiln reap`"
        ),
        hint="build it again",
    )
    return await intervene(spec, state, Trigger.REAPED, time.time(), reason=orphan.reason)


def _reaped_entry(orphan: Orphan) -> tuple[str, dict[str, str]]:
    """The log entry naming the sandbox deleted, named after the trigger (as it always was)."""
    return Trigger.REAPED.value, orphan.to_dict()
