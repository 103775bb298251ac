"""Durable builds as a library: submit a build for a worker, resume a persisted one.

    build_id = await kiln.submit("Dockerfile", store=store)        # a worker will run it
    build = await kiln.resume(build_id, store=store)               # or continue it here
    template = await build.result()

Credentials are never persisted: whoever runs or resumes a build passes them (or has them in
its environment), exactly as for a build started in-process.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import TypedDict, Unpack, cast

import httpx

from kiln.builds._build import Build, BuildKwargs, start_state
from kiln.builds._options import SubmitKwargs, build_options, new_state
from kiln.durable import Session, load_state, prepare_resume
from kiln.errors import KilnError
from kiln.machine import Event, Secrets, Services, load_machine_spec
from kiln.plan import plan_dockerfile
from kiln.store import LEASE_S, RENEW_EVERY_S, BuildNotFound, BuildRecord, Owner, Store


class ResumeKwargs(TypedDict, total=False):
    """What the process that resumes a build brings: credentials, a callback, a transport.

    Everything else (API URL, sizes, deadline) was persisted with the build.
    """

    api_key: str | None
    pat: str | None
    on_event: Callable[[Event], None] | None
    transport: httpx.AsyncBaseTransport | None


async def submit(
    dockerfile: str | os.PathLike[str],
    *,
    store: Store,
    context: str | os.PathLike[str] | None = None,
    name: str | None = None,
    **options: Unpack[SubmitKwargs],
) -> str:
    """Plan a Dockerfile build here and queue it in ``store`` for a worker; returns its id.

    The plan records the build context's path: the worker must be able to read it there.
    """
    plan = plan_dockerfile(dockerfile, context=context, name=name)
    state = new_state(plan, build_options(options))
    await store.create(
        id=state.id,
        name=plan.name,
        state=state.state,
        data=state.to_dict(),
        schema_version=state.schema_version,
    )
    await store.append_events(state.id, [("submitted", {"name": plan.name})])
    return state.id


async def resume(
    build_id: str,
    *,
    store: Store,
    retry_lost_sandbox: bool = False,
    owner: Owner | None = None,
    lease_s: float = LEASE_S,
    renew_every_s: float = RENEW_EVERY_S,
    **options: Unpack[ResumeKwargs],
) -> Build:
    """Take the build over and continue it from its persisted state (a unique id prefix works).

    A build in a final state is not run again: the handle reports how it ended. A build whose
    owner is alive raises OwnedElsewhere naming the owner.
    """
    record = await store.get(build_id)
    if record is None:
        raise BuildNotFound(build_id)
    if record.final:
        return finished(record, options)
    owner = owner or Owner.current()
    record = await store.acquire(record.id, owner, lease_s=lease_s)
    if record.final:
        await store.release(record.id, owner)
        return finished(record, options)
    session = Session(store, owner=owner, lease_s=lease_s, renew_every_s=renew_every_s)
    return await resume_owned(record, session, retry_lost_sandbox=retry_lost_sandbox, **options)


def finished(record: BuildRecord, options: ResumeKwargs) -> Build:
    """A handle on a build that already ended: its result or error, without running anything."""
    return start_state(load_state(record), cast(BuildKwargs, options))


async def resume_owned(
    record: BuildRecord,
    session: Session,
    *,
    retry_lost_sandbox: bool = False,
    **options: Unpack[ResumeKwargs],
) -> Build:
    """Start running a build ``session.owner`` has just acquired (or claimed) as ``record``."""
    session.adopt(record.version)
    services = Services(
        spec=load_machine_spec(),
        emit_event=lambda _event: None,
        secrets=Secrets(api_key=options.get("api_key"), pat=options.get("pat")),
        transport=options.get("transport"),
    )
    try:
        state = load_state(record)
        services.spec = load_machine_spec(name=state.machine)
        # Without credentials every handler would fail, and the build with them: refuse instead,
        # leaving the build as it was for a process that has them.
        services.settings(state)
        events = await prepare_resume(
            state,
            record,
            services,
            owner=session.owner,
            retry_lost_sandbox=retry_lost_sandbox,
        )
    except BaseException:
        with contextlib.suppress(KilnError):
            await session.store.release(record.id, session.owner)
        raise
    finally:
        await services.aclose()
    for event in events:
        session.record(event)
    return start_state(state, cast(BuildKwargs, options), session)
