"""The store tests' instruments: a clock that moves only when told, and one backend under test."""

from __future__ import annotations

from collections.abc import Callable

import attrs

from kiln.store import HEAD_EVENTS, TAIL_EVENTS, Store

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
