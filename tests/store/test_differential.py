"""Random sequences of store operations give the same answers from memory, SQLite and PostgreSQL.

The contract tests pin chosen cases; this looks for the interleavings nobody thought to write,
with the memory store as the model (the simplest reading of the rules).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln.errors import KilnError
from kiln.store import MemoryStore, Owner, PostgresStore, SQLiteStore, Store
from support.stores import FakeClock

IDS = ("a", "b")
OWNERS = (
    Owner("far-a.example", 11, "a"),
    Owner("far-b.example", 12, "b"),
    Owner("here.example", os.getpid(), "c"),
)
LEASE_S = 30.0
# Small event bounds, so that the random appends reach them.
HEAD, TAIL = 2, 3

RealFactory = Callable[[FakeClock], Store]

build_ids = st.sampled_from(IDS)
owners = st.sampled_from(OWNERS)
operations = st.one_of(
    st.tuples(st.just("create"), build_ids, st.sampled_from(["prepare", "upload"])),
    st.tuples(st.just("save"), build_ids, st.integers(1, 5), st.sampled_from(["upload", "done"])),
    st.tuples(
        st.just("commit"),
        build_ids,
        st.integers(1, 5),
        st.sampled_from(["upload", "done"]),
        st.integers(0, 4),
    ),
    st.tuples(st.just("get"), st.sampled_from([*IDS, ""])),
    st.tuples(st.just("list"), st.sampled_from([None, "prepare", "done"])),
    st.tuples(st.just("events"), build_ids, st.integers(1, 4)),
    st.tuples(st.just("cancel"), build_ids),
    st.tuples(st.just("acquire"), build_ids, owners),
    st.tuples(st.just("renew"), build_ids, owners),
    st.tuples(st.just("release"), build_ids, owners),
    st.tuples(st.just("claim"), owners),
    st.tuples(st.just("advance"), st.sampled_from([1.0, 10.0, LEASE_S])),
)


async def _apply(store: Store, clock: FakeClock, op: tuple[Any, ...]) -> object:
    """One operation; its result, or the type of the kiln error it raised."""
    name, *args = op
    try:
        match name:
            case "create":
                return await store.create(id=args[0], name="n", state=args[1], data={"s": args[1]})
            case "save":
                build, version, state = args
                return await store.save(
                    build,
                    expected_version=version,
                    state=state,
                    data={"s": state},
                    sandbox_id=None,
                    final=state == "done",
                )
            case "commit":
                build, version, state, count = args
                committed = await store.commit_transition(
                    build,
                    expected_version=version,
                    state=state,
                    data={"s": state},
                    sandbox_id=None,
                    final=state == "done",
                    events=[("log", {"n": n}) for n in range(count)],
                )
                return committed, await store.events(build)
            case "get":
                return await store.get(args[0])
            case "list":
                return await store.list(state=args[0])
            case "events":
                await store.append_events(args[0], [("log", {"n": n}) for n in range(args[1])])
                return await store.events(args[0], after_seq=1)
            case "cancel":
                return await store.request_cancel(args[0])
            case "acquire":
                return await store.acquire(args[0], args[1], lease_s=LEASE_S)
            case "renew":
                await store.renew(args[0], args[1], lease_s=LEASE_S)
                return "renewed"
            case "release":
                await store.release(args[0], args[1])
                return "released"
            case "claim":
                return await store.claim_next(args[0], lease_s=LEASE_S)
            case _:
                clock.advance(args[0])
                return None
    except KilnError as error:
        return type(error)


async def _compare(ops: list[tuple[Any, ...]], open_real: RealFactory) -> None:
    clock = FakeClock()
    model = MemoryStore(clock=clock, head_events=HEAD, tail_events=TAIL)
    real = open_real(clock)
    # Start from existing builds, so that most random operations act on something.
    ops = [("create", build, "prepare") for build in IDS] + ops
    try:
        for step, op in enumerate(ops):
            expected = await _apply(model, clock, op)
            if op[0] == "advance":
                continue
            assert await _apply(real, clock, op) == expected, f"step {step}: {op}"
    finally:
        await real.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def open_real(request: pytest.FixtureRequest, tmp_path: Path) -> RealFactory:
    """Opens an empty store of the backend under test, once per example."""
    files = itertools.count()
    if request.param == "sqlite":
        return lambda clock: SQLiteStore(
            tmp_path / f"{next(files)}.db", clock=clock, head_events=HEAD, tail_events=TAIL
        )
    url: str = request.getfixturevalue("postgres_store_url")

    def open_postgres(clock: FakeClock) -> Store:
        # A database per example would cost a CREATE DATABASE each; emptying the tables is cheap.
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS events, builds, schema_migrations, turns")
        return PostgresStore(url, clock=clock, head_events=HEAD, tail_events=TAIL)

    return open_postgres


# Each example opens a fresh store; keep the count modest so the whole file runs in seconds.
@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(ops=st.lists(operations, min_size=1, max_size=25))
def test_the_store_agrees_with_the_memory_model(
    open_real: RealFactory, ops: list[tuple[Any, ...]]
) -> None:
    asyncio.run(_compare(ops, open_real))
