"""The worker: runs the builds of a shared store, resumes stalled ones, reaps orphans.

Each claim takes the oldest build nobody live owns (PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so
workers racing for builds never get the same one), with a lease the build's session renews. A
build submitted with :func:`kiln.submit` and a build whose owner died look the same to a worker:
both are resumed from their persisted state. :meth:`Worker.drain` (SIGTERM in ``kiln worker``)
stops claiming, stops each running build at a persisted point without cleaning it up, releases
its lease so another worker can take it over at once, and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import attrs
import httpx

from kiln._logging import logger
from kiln.api import ApiSettings
from kiln.builds._build import Build
from kiln.builds._service import resume_owned
from kiln.durable import (
    BuildHandedOver,
    Session,
    StoreOutage,
    UnreadableBuild,
    load_state,
    machine_of,
    reap,
    unrecorded,
    unrecorded_sandboxes,
)
from kiln.errors import KilnError
from kiln.machine import (
    BUILD_MACHINE,
    MACHINES,
    Secrets,
    TransitionEvent,
    Trigger,
    event_entry,
    fire,
    load_machine_spec,
)
from kiln.store import LEASE_S, RENEW_EVERY_S, BuildRecord, Owner, Store, StoreUnavailable

# How long an idle worker waits before looking for work again: poll_s after a claim or a build's
# end, doubling while nothing is found up to IDLE_POLL_MAX_S. A busy fleet picks up new work
# within a second; an idle worker costs the database a transaction every 8 s (≤ 0.2 a second,
# with its share of the reaper's turns), and N idle workers see a new build within 8/N s.
CLAIM_POLL_S = 1.0
IDLE_POLL_MAX_S = 8.0
# Orphans cost money but are rare: a sweep a minute finds them soon enough. One worker of the
# fleet sweeps per period (a turn taken in the store), not every worker.
REAP_EVERY_S = 60.0
REAP_TURN = "reap"
# Finished builds (with their event logs) are deleted this long after they ended.
RETENTION_S = 7 * 24 * 3600.0
PRUNE_BATCH = 1000
DRAINING = "the worker is draining (SIGTERM)"

LOGGER_NAME = "kiln.worker"


def _at_least_one(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, got {value}")


@attrs.frozen
class WorkerConfig:
    """How many builds at once, and the timings of leases, claims and reaping."""

    concurrency: int = attrs.field(default=1, validator=_at_least_one)
    lease_s: float = LEASE_S
    renew_every_s: float = RENEW_EVERY_S
    poll_s: float = CLAIM_POLL_S
    idle_poll_max_s: float = IDLE_POLL_MAX_S
    reap_every_s: float = REAP_EVERY_S
    retention_s: float = RETENTION_S
    worker_id: str | None = None


@attrs.define
class _Running:
    task: asyncio.Task[None]
    session: Session
    build: Build | None = None


class Worker:
    """Run builds from ``store`` until :meth:`drain` is called; credentials as for a build."""

    def __init__(
        self,
        store: Store,
        config: WorkerConfig | None = None,
        *,
        api_key: str | None = None,
        pat: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._store = store
        self._config = config or WorkerConfig()
        self.owner = Owner.current(self._config.worker_id)
        self._secrets = Secrets(api_key=api_key, pat=pat)
        self._transport = transport
        self._running: dict[str, _Running] = {}
        self._draining = asyncio.Event()
        self._wake = asyncio.Event()
        self._idle_s = self._config.poll_s
        self._log: Any = logger(LOGGER_NAME).bind(worker_id=self.owner.worker_id)

    @property
    def running(self) -> list[str]:
        """The ids of the builds this worker runs now."""
        return list(self._running)

    def drain(self) -> None:
        """Stop claiming; stop the running builds at a persisted point; make run() return."""
        self._draining.set()
        self._wake.set()

    async def run(self) -> None:
        """Claim and run builds until drain(); ConfigError at once when there are no credentials."""
        # Claimed without credentials, every build would fail: better not to start at all.
        ApiSettings.from_env(api_key=self._secrets.api_key, pat=self._secrets.pat)
        self._log.info("worker started", concurrency=self._config.concurrency)
        reaper = asyncio.create_task(self._reap_periodically())
        try:
            while not self._draining.is_set():
                if len(self._running) < self._config.concurrency:
                    record = await self._claim()
                    if record is not None:
                        self._idle_s = self._config.poll_s
                        self._start(record)
                        continue
                    self._idle_s = min(self._config.idle_poll_max_s, self._idle_s * 2)
                await self._idle()
        finally:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
            await self._stop_all()
        self._log.info("worker stopped")

    async def _claim(self) -> BuildRecord | None:
        try:
            return await self._store.claim_next(self.owner, lease_s=self._config.lease_s)
        except StoreUnavailable as error:
            self._log.warning("store unavailable", error=str(error))
            return None

    async def _idle(self) -> None:
        """Wait for a poll interval, a finished build, or drain(): whichever comes first."""
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._idle_s):
                await self._wake.wait()

    def _start(self, record: BuildRecord) -> None:
        session = Session(
            self._store,
            owner=self.owner,
            lease_s=self._config.lease_s,
            renew_every_s=self._config.renew_every_s,
        )
        # A build taken back from this worker itself (its run stopped on a store outage and
        # could not release it) may still be winding down here: the claim moved its version, so
        # that run stops at its next write; the new one starts after it.
        previous = self._running.get(record.id)
        task = asyncio.create_task(
            self._run_one(record, session, previous.task if previous else None),
            name=f"kiln-{record.id}",
        )
        self._running[record.id] = _Running(task=task, session=session)

    async def _run_one(
        self, record: BuildRecord, session: Session, previous: asyncio.Task[None] | None
    ) -> None:
        if previous is not None:
            await asyncio.wait({previous})
        log = self._log.bind(id=record.id, state=record.state)
        running = self._running[record.id]
        build: Build | None = None
        try:
            log.info("build claimed", name=record.name)
            for sandbox in unrecorded_sandboxes(record, time.time()):
                log.warning("sandbox possibly unrecorded", **sandbox.to_dict())
            # Checked while the build is still held, so that no other worker claims it meanwhile.
            load_state(record)
            build = await resume_owned(
                record,
                session,
                api_key=self._secrets.api_key,
                pat=self._secrets.pat,
                transport=self._transport,
            )
            running.build = build
            if self._draining.is_set():
                await session.stop(build.state, DRAINING)
            await build.result()
            log.info("build finished", state=build.state.state)
        except UnreadableBuild as error:
            log.warning("build cannot be loaded", error=str(error))
            await self._give_up(record, error)
        except StoreOutage as outage:
            # Released if the store came back in time; else this worker claims it back once the
            # lease runs out (or another worker does), so the build is never held by nobody.
            log.warning(
                "build stopped: store unavailable",
                state=_state_of(build, record),
                reason=str(outage),
            )
        except BuildHandedOver as handed:
            log.info("build handed over", state=_state_of(build, record), reason=str(handed))
        except KilnError as error:
            log.info("build ended", state=_state_of(build, record), error=str(error))
        except Exception:
            log.exception("build crashed in the worker", state=_state_of(build, record))
        finally:
            if self._running.get(record.id) is running:
                del self._running[record.id]
            # A slot came free: look for work at once and at the fast pace again.
            self._idle_s = self._config.poll_s
            self._wake.set()

    async def _give_up(self, record: BuildRecord, error: UnreadableBuild) -> None:
        """End a build no worker can load, so that it is not claimed again and again: the
        declared unreadable edge of the record's own machine (states/<machine>.toml; the build
        machine when the raw data names none this kiln knows), fired on its state name."""
        machine = machine_of(record)
        spec = load_machine_spec(name=machine if machine in MACHINES else BUILD_MACHINE)
        try:
            dest = await fire(spec, record.state, Trigger.UNREADABLE)
            # The time spent in the state is unreadable too: the time since the last write
            # stands for it.
            transition = TransitionEvent(
                record.state,
                dest,
                Trigger.UNREADABLE.value,
                time.time() - record.updated_at,
                str(error),
            )
            await self._store.save(
                record.id,
                expected_version=record.version,
                state=dest,
                data=record.data,
                sandbox_id=record.sandbox_id,
                final=dest in spec.finals,
                schema_version=record.schema_version,
                holds_sandbox=record.holds_sandbox,
            )
            # The log entry saying why is named after the trigger, as it always was.
            entry = (Trigger.UNREADABLE.value, {"error": str(error)})
            await self._store.append_events(record.id, [event_entry(transition), entry])
        except KilnError as failure:
            self._log.warning("could not end an unloadable build", id=record.id, error=str(failure))
        finally:
            with contextlib.suppress(KilnError):
                await self._store.release(record.id, self.owner)

    async def _stop_all(self) -> None:
        for running in list(self._running.values()):
            if running.build is not None:
                await running.session.stop(running.build.state, DRAINING)
        tasks = [running.task for running in self._running.values()]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _reap_periodically(self) -> None:
        while True:
            try:
                turn = await self._store.take_turn(
                    REAP_TURN, self.owner.describe(), every_s=self._config.reap_every_s
                )
                if turn:
                    await self._sweep()
            except KilnError as error:
                self._log.warning("reap failed", error=str(error))
            await asyncio.sleep(self._config.reap_every_s)

    async def _sweep(self) -> None:
        """This worker's turn at the fleet's chores: orphans, unrecorded sandboxes, history."""
        for orphan in await reap(self._store, secrets=self._secrets, transport=self._transport):
            self._log.info(
                "reaped orphan sandbox",
                id=orphan.build_id,
                state=orphan.state,
                sandbox_id=orphan.sandbox_id,
                reason=orphan.reason,
            )
        for sandbox in await unrecorded(self._store):
            self._log.warning("sandbox possibly unrecorded", **sandbox.to_dict())
        pruned = await self._store.prune(
            finished_before=time.time() - self._config.retention_s, limit=PRUNE_BATCH
        )
        if pruned:
            self._log.info("pruned finished builds", count=pruned)


def _state_of(build: Build | None, record: BuildRecord) -> str:
    return build.state.state if build is not None else record.state
