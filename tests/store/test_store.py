"""The Store contract, run against every backend (memory, SQLite, PostgreSQL)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys

import pytest

from kiln.errors import UsageError
from kiln.store import (
    AmbiguousBuildId,
    BuildNotFound,
    BuildRecord,
    LeaseKeeper,
    LeaseLost,
    OwnedElsewhere,
    Owner,
    StaleWriteError,
    Store,
)
from support.polling import wait_until
from support.stores import START_TIME, Backend

LEASE_S = 30.0
STATE = {"plan": {"name": "hello", "steps": [1, 2, 3]}, "attempts": {"prepare": 0}}

# Owners on other hosts: their pids are never checked, only their leases.
FAR_A = Owner(host="far-a.example", pid=4242, worker_id="worker-a")
FAR_B = Owner(host="far-b.example", pid=4343, worker_id="worker-b")


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped) on this host."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


async def make(
    store: Store, id: str = "b-1", *, name: str = "hello", state: str = "prepare"
) -> BuildRecord:
    return await store.create(id=id, name=name, state=state, data=STATE)


# --- create, get, list ------------------------------------------------------------------------


async def test_create_then_get_round_trips_the_record(store: Store) -> None:
    created = await store.create(
        id="b-1", name="hello", state="resolve_scope", data=STATE, sandbox_id="sbx-1"
    )
    fetched = await store.get("b-1")
    assert fetched == created
    assert fetched.data == STATE
    assert (fetched.version, fetched.state, fetched.name) == (1, "resolve_scope", "hello")
    assert fetched.sandbox_id == "sbx-1"
    assert fetched.owner is None and fetched.lease_expires_at is None
    assert not fetched.final and not fetched.cancel_requested
    assert fetched.created_at == fetched.updated_at == START_TIME


async def test_a_duplicate_id_is_refused(store: Store) -> None:
    await make(store)
    with pytest.raises(UsageError, match="already exists"):
        await make(store)


async def test_get_unknown_is_none_and_a_unique_prefix_finds_the_build(store: Store) -> None:
    await make(store, "abc123")
    await make(store, "abd456")
    assert await store.get("zzz") is None
    assert await store.get("") is None
    assert (await store.get("abc")).id == "abc123"  # type: ignore[union-attr]
    with pytest.raises(AmbiguousBuildId, match="abc123, abd456"):
        await store.get("ab")


async def test_list_is_newest_first_and_filters_by_state(backend: Backend, store: Store) -> None:
    await make(store, "old", state="done")
    backend.clock.advance(1)
    await make(store, "mid", state="prepare")
    # Created in the same clock tick as "mid": creation order still decides.
    await make(store, "new", state="done")
    assert [r.id for r in await store.list()] == ["new", "mid", "old"]
    assert [r.id for r in await store.list(state="done")] == ["new", "old"]
    assert [r.id for r in await store.list(limit=2)] == ["new", "mid"]
    assert await store.list(state="nowhere") == []
    with pytest.raises(UsageError):
        await store.list(limit=0)


async def test_summary_has_the_ls_fields(store: Store) -> None:
    record = await make(store)
    assert set(record.summary()) == {
        "id",
        "name",
        "state",
        "sandbox_id",
        "created_at",
        "updated_at",
    }


# --- save with compare-and-set ---------------------------------------------------------------


async def test_save_moves_the_version_and_writes_the_state(backend: Backend, store: Store) -> None:
    await make(store)
    backend.clock.advance(5)
    version = await store.save(
        "b-1",
        expected_version=1,
        state="create_sandbox",
        data={"x": 1},
        sandbox_id="s",
        final=False,
    )
    record = await store.get("b-1")
    assert version == record.version == 2  # type: ignore[union-attr]
    assert (record.state, record.data, record.sandbox_id) == ("create_sandbox", {"x": 1}, "s")  # type: ignore[union-attr]
    assert record.updated_at == START_TIME + 5  # type: ignore[union-attr]


async def test_a_stale_writer_cannot_move_a_build_backwards(store: Store) -> None:
    await make(store)
    await store.save(
        "b-1",
        expected_version=1,
        state="upload",
        data={"at": "upload"},
        sandbox_id=None,
        final=False,
    )
    with pytest.raises(StaleWriteError) as caught:
        await store.save(
            "b-1",
            expected_version=1,
            state="prepare",
            data={"at": "prepare"},
            sandbox_id=None,
            final=False,
        )
    assert caught.value.actual == 2
    record = await store.get("b-1")
    assert (record.version, record.state, record.data) == (2, "upload", {"at": "upload"})  # type: ignore[union-attr]


async def test_a_finished_build_is_not_written_again(store: Store) -> None:
    await make(store)
    await store.save("b-1", expected_version=1, state="done", data={}, sandbox_id=None, final=True)
    with pytest.raises(StaleWriteError, match="finished"):
        await store.save(
            "b-1", expected_version=2, state="prepare", data={}, sandbox_id=None, final=False
        )
    assert (await store.get("b-1")).state == "done"  # type: ignore[union-attr]


async def test_saving_an_unknown_build_names_it(store: Store) -> None:
    with pytest.raises(BuildNotFound, match="ghost"):
        await store.save(
            "ghost", expected_version=1, state="x", data={}, sandbox_id=None, final=False
        )


async def test_changing_a_returned_record_does_not_change_the_store(store: Store) -> None:
    record = await make(store)
    record.data["plan"]["name"] = "mutated"
    assert (await store.get("b-1")).data == STATE  # type: ignore[union-attr]


# --- events ----------------------------------------------------------------------------------


async def test_events_are_appended_and_read_after_a_seq(backend: Backend, store: Store) -> None:
    await make(store)
    await store.append_events("b-1", [("transition", {"to": "prepare"}), ("log", {"line": "a"})])
    backend.clock.advance(2)
    await store.append_events("b-1", [("warning", {"text": "slow"})])
    events = await store.events("b-1")
    assert [(e.seq, e.kind, e.data) for e in events] == [
        (1, "transition", {"to": "prepare"}),
        (2, "log", {"line": "a"}),
        (3, "warning", {"text": "slow"}),
    ]
    assert [e.time for e in events] == [START_TIME, START_TIME, START_TIME + 2]
    assert [e.seq for e in await store.events("b-1", after_seq=2)] == [3]
    assert await store.events("b-1", after_seq=3) == []


async def test_the_event_log_keeps_its_head_and_tail(backend: Backend) -> None:
    store = backend.open(head_events=3, tail_events=4)
    await make(store)
    for n in range(1, 8):
        await store.append_events("b-1", [("log", {"n": n})])
    await store.append_events("b-1", [("log", {"n": n}) for n in range(8, 21)])
    await store.append_events("b-1", [("log", {"n": 21})])
    events = await store.events("b-1")
    assert [e.seq for e in events] == [1, 2, 3, 18, 19, 20, 21]
    assert [e.data["n"] for e in events] == [1, 2, 3, 18, 19, 20, 21]
    assert (await store.get("b-1")).events_dropped == 14  # type: ignore[union-attr]


async def test_events_of_an_unknown_build_are_refused(store: Store) -> None:
    with pytest.raises(BuildNotFound):
        await store.append_events("ghost", [("log", {})])
    with pytest.raises(BuildNotFound):
        await store.events("ghost")


# --- cancel ----------------------------------------------------------------------------------


async def test_request_cancel_is_idempotent_and_leaves_the_version(store: Store) -> None:
    await make(store)
    assert await store.request_cancel("b-1") is True
    assert await store.request_cancel("b-1") is True
    record = await store.get("b-1")
    assert record.cancel_requested and record.version == 1  # type: ignore[union-attr]


async def test_cancelling_a_finished_build_reports_false(store: Store) -> None:
    await make(store)
    await store.save("b-1", expected_version=1, state="done", data={}, sandbox_id=None, final=True)
    assert await store.request_cancel("b-1") is False
    assert not (await store.get("b-1")).cancel_requested  # type: ignore[union-attr]
    with pytest.raises(BuildNotFound):
        await store.request_cancel("ghost")


# --- ownership -------------------------------------------------------------------------------


async def test_a_live_owner_keeps_the_build_and_is_named(store: Store) -> None:
    await make(store)
    record = await store.acquire("b-1", FAR_A, lease_s=LEASE_S)
    assert record.owner == FAR_A and record.lease_expires_at == START_TIME + LEASE_S
    with pytest.raises(OwnedElsewhere) as caught:
        await store.acquire("b-1", FAR_B, lease_s=LEASE_S)
    assert caught.value.owner == FAR_A
    assert all(part in str(caught.value) for part in ("worker-a", "4242", "far-a.example"))


async def test_an_owner_alive_on_this_host_keeps_the_build(store: Store) -> None:
    await make(store)
    await store.acquire("b-1", Owner.current("first"), lease_s=LEASE_S)
    with pytest.raises(OwnedElsewhere, match="first"):
        await store.acquire("b-1", Owner.current("second"), lease_s=LEASE_S)


async def test_a_dead_owner_on_this_host_is_taken_over_at_once(store: Store) -> None:
    await make(store)
    gone = Owner(host=socket.gethostname(), pid=dead_pid(), worker_id="gone")
    await store.acquire("b-1", gone, lease_s=LEASE_S)
    taker = Owner.current("taker")
    assert (await store.acquire("b-1", taker, lease_s=LEASE_S)).owner == taker


async def test_a_pid_on_another_host_is_not_checked_here(store: Store) -> None:
    await make(store)
    elsewhere = Owner(host="far-a.example", pid=dead_pid(), worker_id="remote")
    await store.acquire("b-1", elsewhere, lease_s=LEASE_S)
    with pytest.raises(OwnedElsewhere):
        await store.acquire("b-1", Owner.current("local"), lease_s=LEASE_S)


async def test_an_expired_lease_is_taken_over_and_fences_the_old_owner(
    backend: Backend, store: Store
) -> None:
    await make(store)
    held = await store.acquire("b-1", FAR_A, lease_s=LEASE_S)
    backend.clock.advance(LEASE_S)
    taken = await store.acquire("b-1", FAR_B, lease_s=LEASE_S)
    assert taken.owner == FAR_B and taken.version > held.version
    # The former owner still believes in its version: its write must lose.
    with pytest.raises(StaleWriteError):
        await store.save(
            "b-1", expected_version=held.version, state="x", data={}, sandbox_id=None, final=False
        )
    with pytest.raises(LeaseLost, match="worker-b"):
        await store.renew("b-1", FAR_A, lease_s=LEASE_S)


async def test_acquiring_again_as_the_same_owner_keeps_the_version(store: Store) -> None:
    await make(store)
    first = await store.acquire("b-1", FAR_A, lease_s=LEASE_S)
    again = await store.acquire("b-1", FAR_A, lease_s=LEASE_S)
    assert again.version == first.version and again.owner == FAR_A


async def test_renew_extends_the_lease(backend: Backend, store: Store) -> None:
    await make(store)
    await store.acquire("b-1", FAR_A, lease_s=LEASE_S)
    backend.clock.advance(20)
    await store.renew("b-1", FAR_A, lease_s=LEASE_S)
    assert (await store.get("b-1")).lease_expires_at == START_TIME + 20 + LEASE_S  # type: ignore[union-attr]
    backend.clock.advance(20)  # past the first lease, inside the renewed one
    with pytest.raises(OwnedElsewhere):
        await store.acquire("b-1", FAR_B, lease_s=LEASE_S)
    backend.clock.advance(10)
    assert (await store.acquire("b-1", FAR_B, lease_s=LEASE_S)).owner == FAR_B


async def test_release_frees_the_build_only_for_its_owner(store: Store) -> None:
    await make(store)
    await store.acquire("b-1", FAR_A, lease_s=LEASE_S)
    await store.release("b-1", FAR_B)
    assert (await store.get("b-1")).owner == FAR_A  # type: ignore[union-attr]
    await store.release("b-1", FAR_A)
    record = await store.get("b-1")
    assert record.owner is None and record.lease_expires_at is None  # type: ignore[union-attr]
    with pytest.raises(LeaseLost, match="released"):
        await store.renew("b-1", FAR_A, lease_s=LEASE_S)
    assert (await store.acquire("b-1", FAR_B, lease_s=LEASE_S)).owner == FAR_B


async def test_ownership_calls_on_an_unknown_build_are_refused(store: Store) -> None:
    for call in (
        store.acquire("ghost", FAR_A, lease_s=LEASE_S),
        store.renew("ghost", FAR_A, lease_s=LEASE_S),
        store.release("ghost", FAR_A),
    ):
        with pytest.raises(BuildNotFound):
            await call


async def test_a_lease_must_be_positive(store: Store) -> None:
    await make(store)
    with pytest.raises(UsageError, match="positive"):
        await store.acquire("b-1", FAR_A, lease_s=0)


# --- claim_next ------------------------------------------------------------------------------


async def test_claim_next_takes_the_oldest_free_unfinished_build(
    backend: Backend, store: Store
) -> None:
    await make(store, "finished")
    await store.save(
        "finished", expected_version=1, state="done", data={}, sandbox_id=None, final=True
    )
    backend.clock.advance(1)
    await make(store, "held")
    await store.acquire("held", FAR_A, lease_s=LEASE_S)
    backend.clock.advance(1)
    await make(store, "free")
    claimed = await store.claim_next(FAR_B, lease_s=LEASE_S)
    assert claimed is not None and (claimed.id, claimed.owner) == ("free", FAR_B)
    # The claimant does not claim what it already runs, and "held" is still leased.
    assert await store.claim_next(FAR_B, lease_s=LEASE_S) is None
    backend.clock.advance(LEASE_S)
    reclaimed = await store.claim_next(FAR_B, lease_s=LEASE_S)
    assert reclaimed is not None and reclaimed.id == "held"


async def test_claim_next_takes_over_a_dead_local_owner(store: Store) -> None:
    await make(store)
    await store.acquire(
        "b-1", Owner(host=socket.gethostname(), pid=dead_pid(), worker_id="gone"), lease_s=LEASE_S
    )
    claimed = await store.claim_next(Owner.current("claimer"), lease_s=LEASE_S)
    assert claimed is not None and claimed.id == "b-1"


async def test_orphans_are_claimed_before_newer_and_older_queued_builds(
    backend: Backend, store: Store
) -> None:
    here = socket.gethostname()
    await make(store, "queued-old")
    backend.clock.advance(1)
    # Its owner on this host is dead: recognised at once, although its lease still runs.
    await make(store, "orphan-local")
    await store.acquire("orphan-local", Owner(here, dead_pid(), "gone"), lease_s=LEASE_S * 10)
    backend.clock.advance(1)
    # Its owner on another host stopped renewing: free once its lease expires.
    await make(store, "orphan-far")
    await store.acquire("orphan-far", FAR_A, lease_s=LEASE_S)
    backend.clock.advance(LEASE_S + 1)
    await make(store, "queued-new")
    claimant = Owner.current("claimer")

    order = [await store.claim_next(claimant, lease_s=LEASE_S) for _ in range(4)]

    assert [c.id if c else None for c in order] == [
        "orphan-local",
        "orphan-far",
        "queued-old",
        "queued-new",
    ]


async def test_concurrent_claimers_never_share_a_build(backend: Backend) -> None:
    builds = 12
    first, second = backend.open(), backend.open()
    for n in range(builds):
        await make(first, f"b-{n:02}")
    owners = [Owner(host="pool.example", pid=os.getpid(), worker_id=f"w{n}") for n in range(16)]
    # Two stores (two connections, or two handles on one file), each racing several claimers.
    claims = await asyncio.gather(
        *(
            (first if n % 2 else second).claim_next(owner, lease_s=LEASE_S)
            for n, owner in enumerate(owners)
        )
    )
    claimed = [c.id for c in claims if c is not None]
    assert sorted(claimed) == [f"b-{n:02}" for n in range(builds)]
    for record in await first.list():
        assert record.owner in owners
    assert len({c.owner for c in claims if c is not None}) == builds


# --- heartbeat -------------------------------------------------------------------------------

# Fast beats so the test waits milliseconds; the deadline only bounds a broken keeper.
BEAT_S = 0.01


async def test_the_lease_keeper_renews_the_lease(backend: Backend, store: Store) -> None:
    await make(store)
    await store.acquire("b-1", FAR_A, lease_s=LEASE_S)

    async def renewed() -> bool:
        record = await store.get("b-1")
        return record is not None and record.lease_expires_at == backend.clock.now + LEASE_S

    async with LeaseKeeper(store, "b-1", FAR_A, lease_s=LEASE_S, every_s=BEAT_S) as keeper:
        backend.clock.advance(25)
        await wait_until(renewed)
        keeper.check()


async def test_the_lease_keeper_reports_a_takeover(backend: Backend, store: Store) -> None:
    await make(store)
    await store.acquire("b-1", FAR_A, lease_s=LEASE_S)
    backend.clock.advance(LEASE_S)
    await store.acquire("b-1", FAR_B, lease_s=LEASE_S)

    async with LeaseKeeper(store, "b-1", FAR_A, lease_s=LEASE_S, every_s=BEAT_S) as keeper:

        async def lost() -> bool:
            return keeper.lost is not None

        await wait_until(lost)
        with pytest.raises(LeaseLost, match="worker-b"):
            keeper.check()
    assert (await store.get("b-1")).owner == FAR_B  # type: ignore[union-attr]


# --- a fleet's chores: sandbox holders, pruning, turns -----------------------------------------


async def _finish(store: Store, id: str, *, holds_sandbox: bool = False) -> None:
    record = await store.get(id)
    assert record is not None
    await store.save(
        id,
        expected_version=record.version,
        state="done",
        data=STATE,
        sandbox_id="sbx",
        final=True,
        holds_sandbox=holds_sandbox,
    )


async def test_sandbox_holders_are_the_marked_builds_until_forgotten(store: Store) -> None:
    await make(store, "plain")
    await make(store, "holder")
    await store.commit_transition(
        "holder",
        expected_version=1,
        state="upload",
        data=STATE,
        sandbox_id="sbx",
        final=False,
        events=[],
        holds_sandbox=True,
    )
    assert [r.id for r in await store.sandbox_holders()] == ["holder"]
    await store.forget_sandbox("holder")
    assert await store.sandbox_holders() == []


async def test_prune_deletes_only_builds_finished_before_the_retention(
    backend: Backend, store: Store
) -> None:
    for id in ("stale", "kept-holder", "running"):
        await make(store, id)
    await store.append_events("stale", [("log", {"n": 1})])
    await _finish(store, "stale")
    await _finish(store, "kept-holder", holds_sandbox=True)
    backend.clock.advance(100)
    await make(store, "recent")
    await _finish(store, "recent")

    assert await store.prune(finished_before=START_TIME + 50) == 1

    assert await store.get("stale") is None
    assert {r.id for r in await store.list()} == {"kept-holder", "running", "recent"}
    with pytest.raises(BuildNotFound):
        await store.events("stale")


async def test_a_turn_goes_to_one_caller_per_period(backend: Backend) -> None:
    first, second = backend.open(), backend.open()
    assert await first.take_turn("reap", "a", every_s=60)
    assert not await second.take_turn("reap", "b", every_s=60)
    assert await second.take_turn("other", "b", every_s=60)
    backend.clock.advance(60)
    assert await second.take_turn("reap", "b", every_s=60)
    assert not await first.take_turn("reap", "a", every_s=60)


async def test_a_commit_extends_the_lease_and_renew_reports_a_cancel(
    backend: Backend, store: Store
) -> None:
    await make(store)
    held = await store.acquire("b-1", FAR_A, lease_s=LEASE_S)
    backend.clock.advance(10)
    await store.commit_transition(
        "b-1",
        expected_version=held.version,
        state="upload",
        data=STATE,
        sandbox_id=None,
        final=False,
        events=[],
        lease_s=LEASE_S,
    )
    record = await store.get("b-1")
    assert record is not None and record.lease_expires_at == START_TIME + 10 + LEASE_S
    assert await store.renew("b-1", FAR_A, lease_s=LEASE_S) is False
    await store.request_cancel("b-1")
    assert await store.renew("b-1", FAR_A, lease_s=LEASE_S) is True


async def test_find_cached_returns_the_newest_build_with_the_key_in_the_state(
    store: Store, backend: Backend
) -> None:
    async def finish(build_id: str, state: str, key: str | None, *, at_create: bool) -> None:
        await store.create(
            id=build_id, name="n", state="s", data={}, cache_key=key if at_create else None
        )
        backend.clock.advance(1.0)
        await store.commit_transition(
            build_id,
            expected_version=1,
            state=state,
            data={"n": build_id},
            sandbox_id=None,
            final=state != "s",
            events=[],
            cache_key=None if at_create else key,
        )

    assert await store.find_cached("k-1", state="done") is None
    await finish("old", "done", "k-1", at_create=True)
    await finish("new", "done", "k-1", at_create=False)
    await finish("failed", "failed", "k-1", at_create=True)
    await finish("running", "s", "k-1", at_create=True)
    await finish("other", "done", "k-2", at_create=True)

    found = await store.find_cached("k-1", state="done")
    assert found is not None and (found.id, found.data) == ("new", {"n": "new"})
    assert (await store.find_cached("k-1", state="failed")).id == "failed"  # type: ignore[union-attr]
    # A write without a key keeps the one the build has.
    await store.commit_transition(
        "running", expected_version=2, state="done", data={}, sandbox_id=None, final=True, events=[]
    )
    assert (await store.find_cached("k-1", state="done")).id == "running"  # type: ignore[union-attr]
