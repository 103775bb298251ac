"""The create window: a worker killed after the platform made a builder sandbox and before the
store recorded its id. The intent was persisted first, so the sandbox is never silent: `kiln
status`, `kiln reap` and the next worker name it and say when it ends on its own."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import psycopg
import pytest

from kiln import submit
from kiln.store import open_store
from kiln.testing import TEST_TOKEN, EmulatorClient
from support.emulator import builder_starts
from support.paths import HELLO
from support.polling import wait_until
from support.processes import kiln_env, run_kiln_async, spawn_kiln

WORKER_ARGS = ["worker", "--lease-s", "2", "--heartbeat-s", "0.5", "--poll-s", "0.2"]
CREATE_PATH = r"/sandboxes$"
# Long enough for the test to see the request in flight and hold the build's row meanwhile.
CREATE_DELAY_MS = 1000


def _create_answered(emulator: EmulatorClient) -> bool:
    return any(
        r["method"] == "POST" and r["path"].endswith("/sandboxes") and r["status"] == 200
        for r in emulator.requests()
    )


@pytest.mark.slow
@pytest.mark.postgres
async def test_a_worker_killed_in_the_create_window_leaves_a_reported_sandbox(
    postgres_store_url: str, emulator: EmulatorClient, tmp_path: Path
) -> None:
    store = open_store(postgres_store_url)
    env = kiln_env(tmp_path, store_url=postgres_store_url, token=TEST_TOKEN)
    try:
        build_id = await submit(HELLO, store=store, api_url=emulator.url)
        emulator.add_fault({"delay_ms": CREATE_DELAY_MS}, method="POST", path=CREATE_PATH)
        doomed = await spawn_kiln([*WORKER_ARGS, "--worker-id", "doomed"], env)

        async def intent_persisted() -> bool:
            record = await store.get(build_id)
            return record is not None and record.data.get("sandbox_request") is not None

        async with await psycopg.AsyncConnection.connect(postgres_store_url) as holder:
            await wait_until(intent_persisted, timeout_s=60)
            # Hold the build's row: the write that would record the sandbox id waits on it.
            await holder.execute("SELECT 1 FROM builds WHERE id = %s FOR UPDATE", (build_id,))
            await wait_until(lambda: _create_answered(emulator), timeout_s=30)
            doomed.kill()
            await doomed.wait()
            await holder.rollback()

        record = await store.get(build_id)
        assert record is not None and record.sandbox_id is None, "the id was never recorded"
        assert len(emulator.live_sandboxes()) == 1
        name = f"kiln-{build_id}-1"

        code, out, err = await run_kiln_async(["status", build_id], env)
        assert code == 0, err
        assert name in out and "ends on its own by" in out, out
        code, out, err = await run_kiln_async(["reap", "--dry-run"], env)
        assert code == 0, err
        assert build_id in out and name in out, out

        heir = await spawn_kiln([*WORKER_ARGS, "--worker-id", "heir"], env)

        async def done() -> bool:
            record = await store.get(build_id)
            return record is not None and record.state == "done"

        await wait_until(done, timeout_s=60)
        heir.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, heir_err = await heir.communicate()
        logged = [json.loads(line) for line in heir_err.decode().splitlines() if line]
        warned = [e for e in logged if e.get("event") == "sandbox possibly unrecorded"]
        assert warned and warned[0]["name"] == name, heir_err.decode()
        events = await store.events(build_id)
        assert any(e.kind == "warning" and name in e.data["message"] for e in events)
        # The build went on in a second sandbox; the first is left to its timeout, reported.
        assert len(emulator.sandboxes()) == 2
        assert builder_starts(emulator) == 1
        assert len(emulator.live_sandboxes()) == 1
    finally:
        await store.close()
