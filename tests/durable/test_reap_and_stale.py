"""Orphaned builder sandboxes are found and deleted; a stale writer cannot move a build back."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kiln import resume
from kiln.durable import Session, reap
from kiln.errors import KilnError
from kiln.machine import Secrets
from kiln.store import Owner, PostgresStore, SQLiteStore, Store
from kiln.testing import TEST_TOKEN, EmulatorClient
from support.durable import FAST_POLL_S, crash_in, leak_a_sandbox, start
from support.emulator import builder_starts
from support.polling import wait_until
from support.processes import kiln_env, run_kiln_async

SECRETS = Secrets(api_key=TEST_TOKEN)
# Far enough ahead that every lease taken now has expired.
LATER_S = 3600.0


async def test_reap_deletes_the_orphans_and_nothing_else(
    store: Store, emulator: EmulatorClient
) -> None:
    leaked = await leak_a_sandbox(store, emulator)
    abandoned = await crash_in(store, emulator.url, lambda s: s.state == "run_builder")
    alive = await crash_in(store, emulator.url, lambda s: s.state == "upload")
    live_owner = Owner.current()  # this very process: live, though owner_holds leaves it out
    await store.acquire(alive, live_owner, lease_s=60)
    assert len(emulator.live_sandboxes()) == 3

    listed = await reap(store, dry_run=True, secrets=SECRETS, abandoned_after_s=0)
    assert {o.build_id for o in listed} == {leaked, abandoned}
    assert len(emulator.live_sandboxes()) == 3, "a dry run deletes nothing"

    reaped = await reap(store, secrets=SECRETS, abandoned_after_s=0)

    assert {o.build_id for o in reaped} == {leaked, abandoned}
    alive_record = await store.get(alive)
    assert alive_record is not None
    assert [s["sandbox_id"] for s in emulator.live_sandboxes()] == [alive_record.sandbox_id]
    record = await store.get(abandoned)
    assert record is not None and record.state == "failed"
    assert record.data["error"]["kind"] == "Reaped"
    reaped = [e.data for e in await store.events(abandoned) if e.kind == "transition"][-1]
    assert (reaped["source"], reaped["trigger"], reaped["dest"]) == (
        "run_builder",
        "reaped",
        "failed",
    )
    assert await reap(store, secrets=SECRETS, abandoned_after_s=0) == []

    await store.release(alive, live_owner)
    await (await resume(alive, store=store, api_key=TEST_TOKEN)).result()
    assert emulator.live_sandboxes() == []


async def test_a_recently_stopped_build_is_left_for_a_resumer(
    store: Store, emulator: EmulatorClient
) -> None:
    build_id = await crash_in(store, emulator.url, lambda s: s.state == "run_builder")

    assert await reap(store, secrets=SECRETS) == []

    await (await resume(build_id, store=store, api_key=TEST_TOKEN)).result()
    assert emulator.live_sandboxes() == []


@pytest.mark.slow
async def test_kiln_reap_lists_then_deletes(
    store_url: str, store: Store, emulator: EmulatorClient, tmp_path: Path
) -> None:
    leaked = await leak_a_sandbox(store, emulator)
    env = kiln_env(tmp_path, store_url=store_url, token=TEST_TOKEN)

    code, out, err = await run_kiln_async(["reap", "--dry-run"], env)
    assert code == 0, err
    assert "would delete sandbox" in out and leaked in out
    assert len(emulator.live_sandboxes()) == 1

    code, out, err = await run_kiln_async(["reap"], env)
    assert code == 0, err
    assert "deleted sandbox" in out and leaked in out
    assert emulator.live_sandboxes() == []


def _store_at(url: str, clock_offset_s: float) -> Store:
    """Another store on the same data, whose clock runs ``clock_offset_s`` ahead."""

    def clock() -> float:
        return time.time() + clock_offset_s

    if url.startswith("sqlite:///"):
        return SQLiteStore(Path(url.removeprefix("sqlite:///")), clock=clock)
    return PostgresStore(url, clock=clock)


async def test_a_stale_writer_cannot_move_a_build_backwards(
    store_url: str, store: Store, emulator: EmulatorClient
) -> None:
    emulator.set_builder(log_lines=20, line_pace_ms=50)
    first = Session(store, owner=Owner.current("first"), poll_s=FAST_POLL_S)
    build = start(store, emulator.url, first)

    async def builder_running() -> bool:
        record = await store.get(build.state.id)
        return record is not None and record.data.get("builder_pid") is not None

    await wait_until(builder_running)
    # The first owner's lease has run out as far as the second one can tell: it takes over.
    later = _store_at(store_url, LATER_S)
    try:
        second = Owner.current("second")
        taken = await later.acquire(build.state.id, second, lease_s=60)

        with pytest.raises(KilnError, match=r"ownership lost|lost its lease|stale write"):
            await build.result()

        record = await store.get(build.state.id)
        assert record is not None
        assert (record.version, record.state) == (taken.version, taken.state), (
            "the first owner wrote nothing after the takeover"
        )
        assert record.owner == second
        await later.release(build.state.id, second)
        await (await resume(build.state.id, store=store, api_key=TEST_TOKEN)).result()
    finally:
        await later.close()
    assert builder_starts(emulator) == 1
    assert emulator.live_sandboxes() == []
