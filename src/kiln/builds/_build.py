"""The library API: build or import an image, as a coroutine, a handle, or a blocking call.

``start_build`` / ``start_import`` plan the build (locally; errors are raised at once) and start
the state machine in a task of the running loop, returning a :class:`Build` handle. The other
entry points are conveniences over them.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Generic, TypeVar, Unpack

import httpx

from kiln.builds._cache import look_up
from kiln.builds._options import SubmitKwargs, build_options, new_state
from kiln.builds._template import Template
from kiln.durable import Session
from kiln.errors import BuildCancelled, BuildError, UsageError
from kiln.machine import (
    BuildState,
    CachedEvent,
    Driver,
    Event,
    PersistHook,
    Secrets,
    Services,
    StatusEvent,
    Trigger,
    intervene,
    load_machine_spec,
    no_persist,
)
from kiln.plan import BuildPlan, plan_dockerfile, plan_import
from kiln.store import Store

_log = logging.getLogger("kiln.build")
_T = TypeVar("_T")


class BuildKwargs(SubmitKwargs, total=False):
    """Options shared by every entry point; named as the CLI's flags. The persisted ones are
    :class:`SubmitKwargs`' (declared once, in BuildOptions); these come with the process."""

    api_key: str | None
    pat: str | None
    on_event: Callable[[Event], None] | None
    transport: httpx.AsyncBaseTransport | None
    # Called with the state after every transition (kiln.store plugs in here).
    persist: PersistHook | None
    # Persist the build there (state, events, ownership, cross-process cancel); see kiln.durable.
    store: Store | None


# The most events one list of ``Build.event_batches()`` holds.
EVENT_BATCH_MAX = 1024
# Why a detached build stopped running here, in its log.
DETACHED = "detached: it continues on kiln resume or in a worker"


class Build:
    """A running build: watch it (``events()``, ``state``), stop it (``cancel()``), await it."""

    def __init__(
        self,
        state: BuildState,
        *,
        secrets: Secrets,
        on_event: Callable[[Event], None] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        persist: PersistHook | None = None,
        session: Session | None = None,
    ) -> None:
        self._state = state
        self._on_event = on_event
        self._session = session
        self._queue: _Mailbox[Event | None] = _Mailbox()
        self._finished = False
        # Asked to stop: a cache hit found after that is not taken (the build ends cancelled).
        self._cancelled = False
        self._services = Services(
            spec=load_machine_spec(name=state.machine),
            emit_event=self._deliver,
            secrets=secrets,
            transport=transport,
        )
        hook = session.persist if session is not None else persist or no_persist
        self._driver = Driver(self._services, persist=hook)
        if session is not None:
            # Mid-phase writes are not transitions: no cancel poll, and not counted as one.
            self._services.checkpoint_hook = session.checkpoint
        self._task = _create_task(self._run(), name=f"kiln-build-{state.id}")

    @property
    def state(self) -> BuildState:
        """The live state object (the same one the store receives)."""
        return self._state

    async def recorded(self) -> None:
        """Wait until the build's store holds its record (or the build ended, or has no store)."""
        if self._session is None:
            return
        ready = asyncio.ensure_future(self._session.recorded.wait())
        try:
            await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()

    async def detach(self) -> None:
        """Stop running the build in this process and leave it persisted where it is, its
        remote work going on: ``kiln resume ID``, ``kiln logs --follow ID`` or a worker take it
        from there. Only a build with a store can be left; a detached build's ``result()``
        raises BuildHandedOver."""
        if self._session is None:
            raise UsageError(
                "only a build persisted in a store can be detached",
                hint="start it with store=... (the CLI always has one)",
            )
        await self._session.stop(self._state, DETACHED)
        await asyncio.wait({self._task})

    @property
    def admitted(self) -> bool:
        """Whether a CAS build's work is with the Image Service: admitted and, for a Dockerfile
        build, its context sealed (what the official client's start_image_build waits for)."""
        progress = self._state.cas
        if progress is None or self._state.build_id is None:
            return False
        return self._state.plan.is_import or progress.sealed

    def cancel(self) -> None:
        """Stop the build at its next await point; its sandbox is deleted before it ends."""
        self._cancelled = True
        self._driver.cancel()

    async def events(self) -> AsyncIterator[Event]:
        """Every event of the build, from its start, until it ends (one consumer)."""
        while not (self._finished and self._queue.empty()):
            event = await self._queue.get()
            if event is None:
                return
            yield event

    async def event_batches(self) -> AsyncIterator[list[Event]]:
        """What ``events()`` gives, in lists of the events delivered since the consumer last
        looked (at most EVENT_BATCH_MAX each): a consumer that writes them out can write each
        list at once, instead of once per line of a fast build log."""
        while not (self._finished and self._queue.empty()):
            first = await self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < EVENT_BATCH_MAX and not self._queue.empty():
                event = self._queue.get_nowait()
                if event is None:
                    yield batch
                    return
                batch.append(event)
            yield batch

    async def result(self) -> Template:
        """Wait for the end: the registered template, or the build's error raised."""
        await asyncio.shield(self._task)
        spec = self._services.spec
        if self._state.outcome == spec.final_of(Trigger.SUCCEED) and self._state.result is not None:
            return Template.from_response(self._state.result, name=self._state.plan.name)
        if self._state.outcome == spec.final_of(Trigger.CANCEL):
            left = (
                "its build on the Image Service was cancelled"
                if self._state.cas is not None
                else "its builder sandbox was deleted"
            )
            raise BuildCancelled(
                f"build of {self._state.plan.name!r} was cancelled",
                hint=f"{left}; run the build again to retry",
            )
        if self._driver.error is not None:
            raise self._driver.error
        record = self._state.error
        if record is None:
            raise BuildError("the build failed")
        raise BuildError(record.message, hint=record.hint)

    def _deliver(self, event: Event) -> None:
        self._queue.put(event)
        if self._session is not None:
            self._session.record(event)
        if self._on_event is None:
            return
        try:
            self._on_event(event)
        except Exception:
            # A broken callback must not fail the build (nor leave its sandbox behind).
            _log.exception("on_event callback raised; the build continues")

    async def _run(self) -> None:
        try:
            if self._session is not None:
                finals = frozenset(self._services.spec.finals)
                if await self._served_from_cache(self._session):
                    await self._session.settle(self._state, finals)
                else:
                    await self._session.run(self._driver, self._state, finals)
            else:
                await self._driver.run(self._state)
        finally:
            await self._services.aclose()
            self._finished = True
            self._queue.put(None)

    async def _served_from_cache(self, session: Session) -> bool:
        """Whether an earlier build in the store answers this one (kiln.builds._cache): then
        the build takes the declared ``cache_hit`` edge to done, with that build's template."""
        state = self._state
        hit = await look_up(state, self._services, session.store)
        if hit is None or state.cache is None or self._cancelled:
            return False
        # Recorded as every new build is, before its first transition.
        await session.open(state)
        now = self._services.clock.now()
        state.created_at = state.created_at or now
        transition = await intervene(self._services.spec, state, Trigger.CACHE_HIT, now)
        state.result = hit.template
        state.templates = hit.templates
        state.cached_from = hit.build_id
        template_id = str(hit.template.get("id"))
        self._services.emit(state, CachedEvent(state.cache.key, template_id, hit.build_id))
        self._services.emit(state, transition)
        return True


class _Mailbox(Generic[_T]):
    """The build's events on their way to ``events()``: a deque, and futures for the consumers
    waiting (an asyncio.Queue's bookkeeping per event showed in bench_logs' profile)."""

    def __init__(self) -> None:
        self._items: collections.deque[_T] = collections.deque()
        self._waiters: list[asyncio.Future[None]] = []

    def put(self, item: _T) -> None:
        self._items.append(item)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def get_nowait(self) -> _T:
        return self._items.popleft()

    async def get(self) -> _T:
        while not self._items:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                self._waiters.remove(waiter)
        return self._items.popleft()


def _create_task(coroutine: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        coroutine.close()
        raise UsageError(
            "a build handle needs a running event loop",
            hint="call start_build/start_import from async code, or use build_image_sync",
        ) from None
    return asyncio.create_task(coroutine, name=name)


def start_build(
    dockerfile: str | os.PathLike[str],
    *,
    context: str | os.PathLike[str] | None = None,
    name: str | None = None,
    **options: Unpack[BuildKwargs],
) -> Build:
    """Plan a Dockerfile build and start it in the running loop."""
    return start_plan(plan_dockerfile(dockerfile, context=context, name=name), **options)


def start_import(
    reference: str, *, name: str | None = None, **options: Unpack[BuildKwargs]
) -> Build:
    """Plan the import of a registry image and start it in the running loop."""
    return start_plan(plan_import(reference, name=name), **options)


def start_plan(plan: BuildPlan, **options: Unpack[BuildKwargs]) -> Build:
    """Start a build planned beforehand (``kiln.plan``): a caller can report plan errors, or
    show the plan, before connecting anywhere."""
    if plan.is_import:
        return _start(plan, f"Importing registry image {plan.base_image}...", options)
    return _start(plan, "Loading Dockerfile...", options)


async def build_image(
    dockerfile: str | os.PathLike[str],
    *,
    context: str | os.PathLike[str] | None = None,
    name: str | None = None,
    **options: Unpack[BuildKwargs],
) -> Template:
    """Build an image from a Dockerfile; returns the registered template."""
    return await start_build(dockerfile, context=context, name=name, **options).result()


async def import_image(
    reference: str, *, name: str | None = None, **options: Unpack[BuildKwargs]
) -> Template:
    """Import a registry image; returns the registered template."""
    return await start_import(reference, name=name, **options).result()


def build_image_sync(
    dockerfile: str | os.PathLike[str],
    *,
    context: str | os.PathLike[str] | None = None,
    name: str | None = None,
    **options: Unpack[BuildKwargs],
) -> Template:
    """``build_image`` for scripts without an event loop."""
    return asyncio.run(build_image(dockerfile, context=context, name=name, **options))


def import_image_sync(
    reference: str, *, name: str | None = None, **options: Unpack[BuildKwargs]
) -> Template:
    """``import_image`` for scripts without an event loop."""
    return asyncio.run(import_image(reference, name=name, **options))


def _start(plan: BuildPlan, loading: str, options: BuildKwargs) -> Build:
    state = new_state(plan, build_options(options))
    build = start_state(state, options)
    # Planning happened before the machine started; tell the caller it did, first.
    build._deliver(StatusEvent(loading, id=state.id))
    return build


def start_state(state: BuildState, options: BuildKwargs, session: Session | None = None) -> Build:
    """Start running ``state`` (a new build, or one loaded from a store), persisted through
    ``session`` when given, else through a session on ``options["store"]`` if there is one."""
    store = options.get("store")
    if session is None and store is not None:
        session = Session(store)
    return Build(
        state,
        secrets=Secrets(api_key=options.get("api_key"), pat=options.get("pat")),
        on_event=options.get("on_event"),
        transport=options.get("transport"),
        persist=options.get("persist"),
        session=session,
    )
