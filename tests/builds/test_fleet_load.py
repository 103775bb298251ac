"""What a fleet costs its store: a running build makes one store call per beat (the checkpoint,
which also renews the lease and reads the cancel flag, or else the renewal, which does both); an
idle worker backs off its claims; the reaper reads sandbox holders by index, once per fleet."""

from __future__ import annotations

import asyncio
import collections
import math
import time
from typing import Any

from kiln import Worker, WorkerConfig
from kiln.durable import Session, reap
from kiln.machine import Secrets
from kiln.store import Store
from kiln.testing import TEST_TOKEN, EmulatorClient
from support.durable import leak_a_sandbox, start

BEAT_S = 0.05
BUILDER_MS = 1500
# Transitions and mid-phase checkpoints of one hello build, with room to spare.
WRITES_BESIDES_BEATS = 30


class CountingStore:
    """Counts the calls made to a store, by method."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self.calls: collections.Counter[str] = collections.Counter()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if not callable(attribute):
            return attribute

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return await attribute(*args, **kwargs)

        return counted


async def test_a_running_build_makes_one_store_call_per_beat(
    store: Store, emulator: EmulatorClient
) -> None:
    # A few lines, then silence: beats with log lines commit them, the silent ones renew.
    emulator.set_builder(duration_ms=BUILDER_MS, log_lines=3, line_pace_ms=50)
    counting = CountingStore(store)
    session = Session(counting, poll_s=BEAT_S)  # type: ignore[arg-type]
    started = time.monotonic()

    build = start(counting, emulator.url, session)  # type: ignore[arg-type]
    await build.result()
    elapsed = time.monotonic() - started

    calls = counting.calls
    # No separate cancel poll, no separate log append, no separate heartbeat.
    assert calls["get"] == 0 and calls["append_events"] == 0, calls
    beats = elapsed / BEAT_S
    assert calls["commit_transition"] + calls["renew"] <= beats + WRITES_BESIDES_BEATS, calls
    assert calls["renew"] > 0, "a beat with nothing to write still renews the lease"


async def test_an_idle_worker_backs_off_its_claims(store: Store) -> None:
    counting = CountingStore(store)
    config = WorkerConfig(poll_s=0.01, idle_poll_max_s=0.08)
    worker = Worker(counting, config, api_key=TEST_TOKEN)  # type: ignore[arg-type]
    started = time.monotonic()
    running = asyncio.create_task(worker.run())
    await asyncio.sleep(1.0)  # measuring a rate over a second, not waiting for an event
    worker.drain()
    await running
    elapsed = time.monotonic() - started

    ramp = math.ceil(math.log2(config.idle_poll_max_s / config.poll_s)) + 1
    assert counting.calls["claim_next"] <= elapsed / config.idle_poll_max_s + ramp
    assert counting.calls["take_turn"] == 1, "one look at the reaper's turn per period"


async def test_the_reaper_reads_sandbox_holders_not_the_history(
    store: Store, emulator: EmulatorClient
) -> None:
    leaked = await leak_a_sandbox(store, emulator)
    for _ in range(3):
        await start(store, emulator.url, Session(store, poll_s=BEAT_S)).result()
    counting = CountingStore(store)

    orphans = await reap(counting, secrets=Secrets(api_key=TEST_TOKEN))  # type: ignore[arg-type]

    assert [o.build_id for o in orphans] == [leaked]
    assert counting.calls["list"] == 0
    assert emulator.live_sandboxes() == []
    # Nothing left to watch: the next sweep reads nothing.
    assert await store.sandbox_holders() == []
