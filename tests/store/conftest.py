"""Fixtures for the store tests: a fake clock, and a ``backend`` fixture that runs a test against
memory, SQLite and PostgreSQL (a database of its own on the session's cluster) in turn."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kiln.store import MemoryStore, PostgresStore, SQLiteStore, Store
from support.stores import Backend, FakeClock, StoreFactory


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[Backend]:
    kind: str = request.param
    factory: StoreFactory
    if kind == "memory":
        shared: dict[str, MemoryStore] = {}

        def factory(head: int, tail: int) -> Store:
            return shared.setdefault(
                "store", MemoryStore(clock=clock, head_events=head, tail_events=tail)
            )
    elif kind == "sqlite":
        path = tmp_path / "builds.db"

        def factory(head: int, tail: int) -> Store:
            return SQLiteStore(path, clock=clock, head_events=head, tail_events=tail)
    else:
        url: str = request.getfixturevalue("postgres_store_url")

        def factory(head: int, tail: int) -> Store:
            return PostgresStore(url, clock=clock, head_events=head, tail_events=tail)

    backend = Backend(kind=kind, clock=clock, factory=factory)
    yield backend
    for store in backend.opened:
        await store.close()


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.open()
