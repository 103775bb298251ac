"""Fixtures for the store tests: a fake clock, and a ``backend`` fixture that runs a test against
memory, SQLite and PostgreSQL (a database of its own on the session's cluster) in turn."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import attrs
import pytest

from kiln.store import HEAD_EVENTS, TAIL_EVENTS, MemoryStore, PostgresStore, SQLiteStore, Store

# Any fixed instant will do; a round one makes failing assertions easy to read.
START_TIME = 1_800_000_000.0


@attrs.define
class FakeClock:
    """A clock that moves only when told, so lease expiry is tested without sleeping."""

    now: float = START_TIME

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


StoreFactory = Callable[[int, int], Store]


@attrs.define
class Backend:
    """One store backend under test; ``open()`` gives another store on the same data, as a
    second process would have (for memory, the same object: it cannot be shared otherwise)."""

    kind: str
    clock: FakeClock
    factory: StoreFactory
    opened: list[Store] = attrs.field(factory=list)

    def open(self, *, head_events: int = HEAD_EVENTS, tail_events: int = TAIL_EVENTS) -> Store:
        store = self.factory(head_events, tail_events)
        self.opened.append(store)
        return store


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
