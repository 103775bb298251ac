"""Store.delete, run against every backend: one build goes with its events, only at the version
its deleter read (what `kiln rm` stands on, issue 13)."""

from __future__ import annotations

import pytest

from kiln.store import BuildNotFound, Owner, Store
from support.stores import Backend

LEASE_S = 30.0
FAR = Owner(host="far.example", pid=4242, worker_id="worker-far")


async def test_delete_removes_the_build_and_its_events_only(store: Store) -> None:
    gone = await store.create(id="gone", name="a", state="s", data={})
    await store.create(id="kept", name="b", state="s", data={})
    await store.append_events("gone", [("log", {"n": 1})])
    await store.append_events("kept", [("log", {"n": 2})])

    assert await store.delete("gone", expected_version=gone.version)

    assert await store.get("gone") is None
    with pytest.raises(BuildNotFound):
        await store.events("gone")
    assert [r.id for r in await store.list()] == ["kept"]
    assert [e.data for e in await store.events("kept")] == [{"n": 2}]


async def test_delete_refuses_a_build_whose_version_moved(backend: Backend, store: Store) -> None:
    read = await store.create(id="taken", name="a", state="s", data={})
    # Another process takes the build after the deleter read it: its reasons no longer hold.
    await backend.open().acquire("taken", FAR, lease_s=LEASE_S)

    assert not await store.delete("taken", expected_version=read.version)

    assert await store.get("taken") is not None


async def test_delete_of_an_unknown_build_names_it(store: Store) -> None:
    with pytest.raises(BuildNotFound, match="nope"):
        await store.delete("nope", expected_version=1)


async def test_delete_takes_an_exact_id_not_a_prefix(store: Store) -> None:
    record = await store.create(id="abcdef", name="a", state="s", data={})
    with pytest.raises(BuildNotFound):
        await store.delete("abc", expected_version=record.version)
    assert await store.get("abcdef") is not None
