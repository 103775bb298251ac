"""commit_transition, run against every backend: a state write and its events as one commit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from kiln.store import BuildNotFound, Committed, Owner, StaleWriteError, Store
from support.stores import START_TIME, Backend

STATE = {"plan": {"name": "hello"}, "attempts": {"prepare": 0}}
LOG = [("transition", {"to": "prepare"}), ("log", {"line": "a"})]


async def commit(
    store: Store,
    version: int,
    events: Sequence[tuple[str, dict[str, Any]]] = (),
    *,
    state: str = "prepare",
    final: bool = False,
) -> Committed:
    return await store.commit_transition(
        "b-1",
        expected_version=version,
        state=state,
        data={"at": state},
        sandbox_id="sbx-1",
        final=final,
        events=events,
    )


async def test_a_commit_writes_the_state_and_its_events(backend: Backend, store: Store) -> None:
    await store.create(id="b-1", name="hello", state="resolve_scope", data=STATE)
    backend.clock.advance(5)
    committed = await commit(store, 1, LOG, state="create_sandbox")
    assert committed == Committed(version=2, cancel_requested=False)
    record = await store.get("b-1")
    assert record is not None
    assert (record.version, record.state, record.data) == (
        2,
        "create_sandbox",
        {"at": "create_sandbox"},
    )
    assert record.sandbox_id == "sbx-1" and record.updated_at == START_TIME + 5
    events = await store.events("b-1")
    assert [(e.seq, e.kind, e.data, e.time) for e in events] == [
        (1, "transition", {"to": "prepare"}, START_TIME + 5),
        (2, "log", {"line": "a"}, START_TIME + 5),
    ]


async def test_a_commit_without_events_leaves_the_log_alone(store: Store) -> None:
    await store.create(id="b-1", name="hello", state="resolve_scope", data=STATE)
    await store.append_events("b-1", LOG)
    assert (await commit(store, 1)).version == 2
    assert [e.seq for e in await store.events("b-1")] == [1, 2]


async def test_a_commit_reports_a_cancel_request(store: Store) -> None:
    await store.create(id="b-1", name="hello", state="resolve_scope", data=STATE)
    assert not (await commit(store, 1)).cancel_requested
    assert await store.request_cancel("b-1")
    assert await commit(store, 2) == Committed(version=3, cancel_requested=True)


async def test_a_stale_commit_writes_neither_state_nor_events(store: Store) -> None:
    await store.create(id="b-1", name="hello", state="resolve_scope", data=STATE)
    await commit(store, 1, LOG, state="prepare")
    with pytest.raises(StaleWriteError, match="version moved") as refused:
        await commit(store, 1, [("log", {"line": "late"})], state="upload")
    assert (refused.value.expected, refused.value.actual) == (1, 2)
    record = await store.get("b-1")
    assert record is not None and (record.state, record.version) == ("prepare", 2)
    assert [e.data for e in await store.events("b-1")] == [d for _, d in LOG]


async def test_a_commit_after_a_takeover_is_stale(store: Store) -> None:
    await store.create(id="b-1", name="hello", state="resolve_scope", data=STATE)
    taken = await store.acquire("b-1", Owner(host="far.example", pid=7, worker_id="w"), lease_s=30)
    with pytest.raises(StaleWriteError):
        await commit(store, taken.version - 1, LOG)
    assert await store.events("b-1") == []


async def test_nothing_is_committed_after_the_final_state(store: Store) -> None:
    await store.create(id="b-1", name="hello", state="resolve_scope", data=STATE)
    assert (await commit(store, 1, state="done", final=True)).version == 2
    with pytest.raises(StaleWriteError, match="build finished"):
        await commit(store, 2, LOG, state="cleanup")
    assert await store.events("b-1") == []


async def test_a_commit_to_an_unknown_build_is_refused(store: Store) -> None:
    with pytest.raises(BuildNotFound):
        await commit(store, 1, LOG)


async def test_commits_keep_the_head_and_tail_of_the_log(backend: Backend) -> None:
    store = backend.open(head_events=3, tail_events=4)
    await store.create(id="b-1", name="hello", state="resolve_scope", data=STATE)
    version = 1
    for n in range(1, 8):
        version = (await commit(store, version, [("log", {"n": n})])).version
    version = (await commit(store, version, [("log", {"n": n}) for n in range(8, 21)])).version
    await store.append_events("b-1", [("log", {"n": 21})])
    await commit(store, version, [("log", {"n": 22})])
    events = await store.events("b-1")
    assert [e.seq for e in events] == [1, 2, 3, 19, 20, 21, 22]
    assert [e.data["n"] for e in events] == [1, 2, 3, 19, 20, 21, 22]
    assert (await store.get("b-1")).events_dropped == 15  # type: ignore[union-attr]
