"""Session details that whole builds cannot reach deterministically."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kiln.durable import Session
from kiln.machine import BuildState
from kiln.plan import plan_dockerfile
from kiln.store import MemoryStore, Owner
from support.paths import HELLO


class LandingSaves(MemoryStore):
    """A store whose writes, once started, land even if the caller is cancelled (as SQLite's
    do: they run in a worker thread); each waits for ``gate`` first."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def save(self, *args: Any, **kwargs: Any) -> int:
        self.entered.set()
        return await asyncio.shield(asyncio.ensure_future(self._save(*args, **kwargs)))

    async def _save(self, *args: Any, **kwargs: Any) -> int:
        await self.gate.wait()
        return await super().save(*args, **kwargs)


async def test_a_write_cancelled_midway_lands_and_the_next_is_not_stale() -> None:
    store = LandingSaves()
    state = BuildState(plan=plan_dockerfile(HELLO))
    await store.create(id=state.id, name="hello", state=state.state, data=state.to_dict())
    session = Session(store)
    session.adopt((await store.acquire(state.id, session.owner, lease_s=30)).version)

    writing = asyncio.create_task(session.checkpoint(state))
    await store.entered.wait()
    writing.cancel()
    store.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await writing

    state.state = "prepare"
    await session.checkpoint(state)

    record = await store.get(state.id)
    assert record is not None and record.state == "prepare"


async def test_events_are_written_with_the_state_that_accounts_for_them() -> None:
    store = MemoryStore()
    state = BuildState(plan=plan_dockerfile(HELLO))
    await store.create(id=state.id, name="hello", state=state.state, data=state.to_dict())
    session = Session(store, owner=Owner.current("w"))
    session.adopt((await store.acquire(state.id, session.owner, lease_s=30)).version)

    session.record(("build_log", {"message": "one"}))
    state.output_events_delivered = 1
    await session.checkpoint(state)

    record = await store.get(state.id)
    assert record is not None and record.data["output_events_delivered"] == 1
    assert [e.data["message"] for e in await store.events(state.id)] == ["one"]
