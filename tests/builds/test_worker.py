"""The worker: submitted builds run once each across workers, a killed worker's builds are taken
over, SIGTERM drains (persisted point, leases released, exit 0), logs are JSON lines."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import attrs
import pytest

from kiln import Worker, WorkerConfig, resume, submit
from kiln.store import Owner, Store, open_store
from kiln.testing import TEST_TOKEN, EmulatorClient
from support.durable import crash_in, leak_a_sandbox, rewrite_record
from support.emulator import builder_starts
from support.paths import HELLO
from support.polling import wait_until
from support.processes import kiln_env, spawn_kiln

SHORT_LEASE_S = 2.0
# Clocks are read in two places (the store and this test): allow for the difference.
LEASE_SLACK = 0.9
FAST_WORKER = WorkerConfig(concurrency=2, lease_s=5.0, renew_every_s=1.0, poll_s=0.05)
# A short lease, as the issue asks, so that a takeover is quick even across hosts.
WORKER_ARGS = ["worker", "--lease-s", "2", "--heartbeat-s", "0.5", "--poll-s", "0.2"]


async def _submit(store: Store, emulator: EmulatorClient, count: int) -> list[str]:
    return [
        await submit(HELLO, store=store, name=f"hello-{n}", api_url=emulator.url)
        for n in range(count)
    ]


async def _all_done(store: Store, ids: list[str]) -> bool:
    records = [await store.get(build_id) for build_id in ids]
    return all(r is not None and r.state == "done" for r in records)


async def _resumed_by(store: Store, build_id: str) -> list[str]:
    return [e.data["owner"] for e in await store.events(build_id) if e.kind == "resumed"]


async def test_two_workers_never_run_the_same_build_at_once(
    store: Store, emulator: EmulatorClient
) -> None:
    emulator.set_builder(duration_ms=200)
    orphan = await leak_a_sandbox(store, emulator)
    damaged = await _submit(store, emulator, 1)
    await rewrite_record(store, damaged[0], {"plan": "not a plan"})
    ids = await _submit(store, emulator, 5)
    workers = [
        Worker(store, attrs.evolve(FAST_WORKER, worker_id=f"worker-{n}"), api_key=TEST_TOKEN)
        for n in range(2)
    ]
    tasks = [asyncio.create_task(worker.run()) for worker in workers]
    overlaps: list[set[str]] = []

    async def done_without_overlap() -> bool:
        overlaps.append(set(workers[0].running) & set(workers[1].running))
        return await _all_done(store, ids)

    await wait_until(done_without_overlap, timeout_s=60)
    for worker in workers:
        worker.drain()
    await asyncio.gather(*tasks)

    assert not any(overlaps), "a build ran in both workers at once"
    record = await store.get(damaged[0])
    assert record is not None and record.state == "failed", "an unloadable build is given up"
    given_up = [e.data["trigger"] for e in await store.events(damaged[0]) if e.kind == "transition"]
    assert given_up[-1:] == ["unreadable"], "by the declared edge, logged as every transition"
    events = [e.kind for e in await store.events(orphan)]
    assert "reaped" in events, "the workers reaped the orphaned sandbox"
    for build_id in ids:
        assert len(await _resumed_by(store, build_id)) == 1, "each build is claimed once"
    sandboxes = [(await store.get(build_id)).sandbox_id for build_id in ids]  # type: ignore[union-attr]
    assert builder_starts(emulator, sandboxes) == len(ids)
    assert len(set(sandboxes)) == len(ids)
    assert emulator.live_sandboxes() == []


async def test_a_build_held_from_another_host_is_taken_over_when_its_lease_expires(
    store: Store, emulator: EmulatorClient
) -> None:
    build_id = await crash_in(store, emulator.url, lambda s: s.state == "run_builder")
    # A worker on another machine holds it: its pid means nothing here, only its lease counts.
    elsewhere = Owner(host="another-host.invalid", pid=1, worker_id="far-away")
    await store.acquire(build_id, elsewhere, lease_s=SHORT_LEASE_S)
    held_at = time.monotonic()
    worker = Worker(store, attrs.evolve(FAST_WORKER, worker_id="here"), api_key=TEST_TOKEN)
    task = asyncio.create_task(worker.run())
    try:
        await wait_until(lambda: _all_done(store, [build_id]), timeout_s=30)
    finally:
        worker.drain()
        await task

    assert time.monotonic() - held_at >= SHORT_LEASE_S * LEASE_SLACK
    owners = await _resumed_by(store, build_id)
    assert len(owners) == 1 and "worker here" in owners[0]
    assert builder_starts(emulator) == 1
    assert emulator.live_sandboxes() == []


@pytest.mark.slow
@pytest.mark.postgres
async def test_a_killed_workers_builds_are_taken_over_by_the_other(
    postgres_store_url: str, emulator: EmulatorClient, tmp_path: Path
) -> None:
    emulator.set_builder(log_lines=10, line_pace_ms=150)
    store = open_store(postgres_store_url)
    try:
        ids = await _submit(store, emulator, 3)
        env = kiln_env(tmp_path, store_url=postgres_store_url, token=TEST_TOKEN)
        first = await spawn_kiln([*WORKER_ARGS, "--concurrency", "3", "--worker-id", "a"], env)

        async def first_runs_every_builder() -> bool:
            records = [await store.get(build_id) for build_id in ids]
            return all(
                r is not None
                and r.owner is not None
                and r.owner.worker_id == "a"
                and r.data.get("builder_pid") is not None
                for r in records
            )

        await wait_until(first_runs_every_builder, timeout_s=60)
        second = await spawn_kiln([*WORKER_ARGS, "--concurrency", "3", "--worker-id", "b"], env)
        first.kill()
        await first.wait()

        await wait_until(lambda: _all_done(store, ids), timeout_s=60)
        second.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            _, err = await second.communicate()
        assert second.returncode == 0, err.decode()

        for build_id in ids:
            owners = await _resumed_by(store, build_id)
            assert len(owners) == 2 and "worker a" in owners[0] and "worker b" in owners[1]
        assert builder_starts(emulator) == len(ids), "the builders were reattached, not rerun"
        assert emulator.live_sandboxes() == []
    finally:
        await store.close()


@pytest.mark.slow
async def test_sigterm_drains_releases_and_another_worker_finishes(
    store_url: str, store: Store, emulator: EmulatorClient, tmp_path: Path
) -> None:
    emulator.set_builder(log_lines=40, line_pace_ms=100)
    (build_id,) = await _submit(store, emulator, 1)
    worker = await spawn_kiln(
        WORKER_ARGS, kiln_env(tmp_path, store_url=store_url, token=TEST_TOKEN)
    )

    async def builder_logging() -> bool:
        record = await store.get(build_id)
        return record is not None and record.data.get("output_events_delivered", 0) >= 3

    await wait_until(builder_logging, timeout_s=60)
    worker.send_signal(signal.SIGTERM)
    async with asyncio.timeout(20):
        _, err = await worker.communicate()

    assert worker.returncode == 0, err.decode()
    record = await store.get(build_id)
    assert record is not None and record.state == "run_builder" and record.owner is None
    kinds = [e.kind for e in await store.events(build_id)]
    assert "handed_over" in kinds
    _assert_json_logs(err.decode())

    build = await resume(build_id, store=store, api_key=TEST_TOKEN)
    await build.result()
    assert builder_starts(emulator) == 1
    lines = [e.data["message"] for e in await store.events(build_id) if e.kind == "build_log"]
    assert len(lines) == len(set(lines)) and "progress 40/40" in lines
    assert emulator.live_sandboxes() == []


def _assert_json_logs(stderr: str) -> None:
    """Every line is a JSON object; every line about a build names it and its state."""
    entries: list[dict[str, Any]] = [json.loads(line) for line in stderr.splitlines() if line]
    about_builds = [entry for entry in entries if "id" in entry]
    assert about_builds, entries
    assert all("state" in entry for entry in about_builds), about_builds
    assert {"build claimed", "build handed over"} <= {entry["event"] for entry in entries}
