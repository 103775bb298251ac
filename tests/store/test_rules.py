"""The pure rules every backend shares: event bounds and who may take a build."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.store import Owner
from kiln.store._base import owner_holds, pid_alive, plan_events

NOW = 1_000.0


@settings(max_examples=200)
@given(
    head=st.integers(0, 6),
    tail=st.integers(0, 6),
    batches=st.lists(st.integers(0, 9), max_size=8),
)
def test_the_bound_keeps_exactly_the_first_head_and_last_tail_events(
    head: int, tail: int, batches: list[int]
) -> None:
    stored: set[int] = set()
    total = 0
    for count in batches:
        plan = plan_events(total, count, head=head, tail=tail)
        assert plan.first_seq == total + 1
        stored -= set(range(plan.drop_from, plan.drop_to + 1))
        stored |= {plan.first_seq + i for i, kept in enumerate(plan.keep) if kept}
        total = plan.total
        expected = {s for s in range(1, total + 1) if s <= head or s > total - tail}
        assert stored == expected
        assert plan.dropped == total - len(expected)


def test_owner_current_is_stable_within_a_process_and_distinct_by_worker() -> None:
    assert Owner.current() == Owner.current()
    assert Owner.current("a") != Owner.current("b")
    assert Owner.current().pid == os.getpid()


def test_pid_alive_tells_a_running_process_from_a_reaped_one() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert pid_alive(os.getpid())
    assert not pid_alive(child.pid)


def test_who_holds_a_build() -> None:
    here = socket.gethostname()
    me = Owner(here, os.getpid(), "me")
    live_local = Owner(here, os.getpid(), "other")
    remote = Owner("far.example", 1, "remote")
    assert not owner_holds(None, None, me, NOW)
    assert not owner_holds(me, NOW + 10, me, NOW), "an owner never blocks itself"
    assert owner_holds(live_local, NOW + 10, me, NOW)
    assert not owner_holds(live_local, NOW, me, NOW), "a lease ending now has expired"
    assert owner_holds(remote, NOW + 10, me, NOW)
    assert not owner_holds(remote, NOW - 1, me, NOW)
