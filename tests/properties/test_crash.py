"""Crash level: the process running a build dies at generated points, possibly several times,
and the build is resumed each time from the store; the emulator-level invariants still hold.

The crash is simulated in-process, not with SIGKILL (tests/durable does that for every
transition; a process per example would cost seconds each). A kill point is the index of an
event of the build (transitions, and status and log lines from inside handlers, so that kills
land mid-phase too): when the build emits it, ``Killed`` (a BaseException nothing in kiln
catches) unwinds the incarnation at once, and from that moment its store refuses every call, so
the dead incarnation neither writes its state nor releases its lease. The next incarnation runs
under an owner whose pid is gone, as after a real crash, and takes the build over at once.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

import kiln
from kiln.errors import KilnError
from kiln.machine import Event, StatusEvent
from kiln.store import Owner, Store
from kiln.testing import TEST_TOKEN, EmulatorClient
from properties.levels import examples
from support.emulator import builder_starts, completes_served
from support.paths import HELLO

pytestmark = pytest.mark.slow

# A fault-free build emits about forty events; kill points reach a little past the end.
MAX_KILL_POINT = 48
MAX_CRASHES = 3
BUILDER_FAULTS = ({}, {}, {}, {"oom_kill": True})
REGISTERED_PREFIX = "Image '"


class Killed(BaseException):
    """The process running this incarnation of the build died."""


def _registered(event: Event) -> bool:
    """The status complete reports once the platform answered, before its state is written."""
    return isinstance(event, StatusEvent) and event.message.startswith(REGISTERED_PREFIX)


def dead_pid() -> int:
    """The pid of a process that has exited: an owner that no longer runs anything."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


# Whether the incarnation dies at this event, given how many events it has emitted (this one
# included).
KillPoint = Callable[[int, Event], bool]


def at_index(index: int | None) -> KillPoint:
    """Die at the index-th event."""
    return lambda seen, _event: seen == index


@attrs.define
class Incarnation:
    """One process's run of the build: its view of the store dies with it."""

    store: Store
    kill: KillPoint
    seen: int = 0
    dead: bool = False

    def on_event(self, event: Event) -> None:
        self.seen += 1
        if self.kill(self.seen, event):
            self.dead = True
            raise Killed

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.store, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.dead:
                raise Killed
            return await method(*args, **kwargs)

        return call


async def run_with_crashes(
    emulator: EmulatorClient, store: Store, kills: list[KillPoint]
) -> tuple[str, int]:
    """Submit a build, then run it once per kill point and once more; returns its id and how
    many incarnations died."""
    build_id = await kiln.submit(HELLO, store=store, api_url=emulator.url)
    pid = dead_pid()
    deaths = 0
    for number, kill in enumerate([*kills, at_index(None)]):
        incarnation = Incarnation(store, kill)
        owner = Owner(host=socket.gethostname(), pid=pid, worker_id=f"incarnation-{number}")
        try:
            build = await kiln.resume(
                build_id,
                store=incarnation,  # type: ignore[arg-type]
                owner=owner,
                api_key=TEST_TOKEN,
                on_event=incarnation.on_event,
            )
            await build.result()
        except Killed:
            deaths += 1
            continue
        except KilnError:
            pass
        break
    return build_id, deaths


@settings(
    max_examples=examples("crash"),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    kills=st.lists(st.integers(1, MAX_KILL_POINT), max_size=MAX_CRASHES),
    builder=st.sampled_from(BUILDER_FAULTS),
)
@example(kills=[1, 1, 1], builder={})
# Found failing during development: the second kill landed between complete's answer and the
# state write, and the resumed complete was refused with 409 (fixed in the complete handler).
@example(kills=[11, 31], builder={})
def test_a_build_killed_and_resumed_ends_as_if_never_killed(
    kiln_emulator: EmulatorClient, kiln_store: Store, kills: list[int], builder: dict[str, Any]
) -> None:
    check_killed_and_resumed(kiln_emulator, kiln_store, kills, builder)


@settings(
    max_examples=examples("crash_cloud"),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(kills=st.lists(st.integers(1, MAX_KILL_POINT), max_size=MAX_CRASHES))
def test_a_build_killed_and_resumed_in_the_cloud_ends_as_if_never_killed(
    cloud_emulator: EmulatorClient, kiln_store: Store, kills: list[int]
) -> None:
    # The library's own backoff applies here: each incarnation waits out the pending window's
    # 502s a second apart, as against the platform, hence few examples.
    check_killed_and_resumed(cloud_emulator, kiln_store, kills, {})


def check_killed_and_resumed(
    emulator: EmulatorClient, store: Store, kills: list[int], builder: dict[str, Any]
) -> None:
    kiln_emulator, kiln_store = emulator, store
    kiln_emulator.reset()
    if builder:
        kiln_emulator.set_builder(**builder)
    kill_points = [at_index(index) for index in kills]
    build_id, deaths = asyncio.run(run_with_crashes(kiln_emulator, kiln_store, kill_points))
    event(f"{deaths} crashes")
    record = asyncio.run(kiln_store.get(build_id))
    assert record is not None and record.final
    assert record.state == ("failed" if builder else "done"), record.data.get("error")
    if record.state == "failed":
        # Whichever incarnation saw the failure, the persisted error names the sandbox and build.
        message = record.data["error"]["message"]
        assert record.data["sandbox_id"] in message and record.data["build_id"] in message
    assert kiln_emulator.live_sandboxes() == []
    assert builder_starts(kiln_emulator) <= 1
    assert completes_served(kiln_emulator.requests()) <= 1
    events = asyncio.run(kiln_store.events(build_id))
    assert TEST_TOKEN not in repr(record.data) + repr([e.data for e in events])


async def test_a_build_killed_right_after_complete_is_not_failed(
    kiln_emulator: EmulatorClient, kiln_store: Store
) -> None:
    """The platform registered the template, the process died before writing that down: the
    resumed build adopts the template instead of failing on complete's 409."""
    build_id, deaths = await run_with_crashes(
        kiln_emulator, kiln_store, [lambda _seen, event: _registered(event)]
    )
    record = await kiln_store.get(build_id)
    assert deaths == 1
    assert record is not None and record.state == "done", record.data.get("error")
    assert completes_served(kiln_emulator.requests()) == 1
