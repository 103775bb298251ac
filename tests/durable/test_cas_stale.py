"""A CAS build nobody runs any more (its process died in wait_build): what `kiln rm`,
`kiln cancel`, `kiln reap` and a worker make of it (records carry the machine they run). It holds no builder sandbox of its own, its
remote work is its build on the Image Service, which a cancel reaches (through `kiln resume` or a
worker running the machine's release state); the reaper has no sandbox to delete; a worker
that cannot load it ends it by the CAS machine's own declared `unreadable` edge."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kiln import Worker, WorkerConfig
from kiln.builds._build import start_state
from kiln.builds._options import build_options, new_state
from kiln.durable import reap, unattended_remote_builds
from kiln.machine import CAS_MACHINE, Secrets, Trigger, load_machine_spec
from kiln.plan import plan_dockerfile
from kiln.store import Store
from kiln.testing import TEST_TOKEN, EmulatorClient
from support.durable import FAST_POLL_S, Crash, CrashingSession, dead_owner, rewrite_record
from support.paths import HELLO
from support.polling import wait_until
from support.processes import kiln_env, run_kiln_async

SPEC = load_machine_spec(name=CAS_MACHINE)
WAITING = "wait_build"  # a state that holds an admitted remote build
WORKER = WorkerConfig(concurrency=1, lease_s=5.0, renew_every_s=1.0, poll_s=0.05)
# A builder that outlasts the test: the remote build is still running when the process dies.
ENDLESS_MS = 600_000


async def stale_cas_build(store: Store, emulator: EmulatorClient) -> str:
    """A CAS build whose process died (a dead owner) as it entered wait_build; its id."""
    emulator.set_builder(duration_ms=ENDLESS_MS)
    options = build_options({"cas": True, "api_url": emulator.url})
    state = new_state(plan_dockerfile(HELLO), options)
    session = CrashingSession(
        store, lambda s: s.state == WAITING, owner=dead_owner(), poll_s=FAST_POLL_S
    )
    build = start_state(state, {"api_key": TEST_TOKEN}, session)
    try:
        await build.result()
    except Crash:
        return state.id
    raise AssertionError("the build ended before the crash point")


async def test_kiln_rm_and_cancel_of_a_cas_build_speak_of_its_image_service_build(
    store_url: str, store: Store, emulator: EmulatorClient, tmp_path: Path
) -> None:
    build_id = await stale_cas_build(store, emulator)
    env = kiln_env(tmp_path, store_url=store_url, token=TEST_TOKEN)

    code, out, err = await run_kiln_async(["rm", build_id], env)
    assert code != 0
    assert "its build on the Image Service may still run" in err
    assert "cancels its build on the Image Service" in err
    assert "sandbox" not in err, "a CAS build holds no builder sandbox of kiln's"

    code, out, err = await run_kiln_async(["cancel", build_id], env)
    assert code == 0, err
    assert "cancels its build on the Image Service and ends it as cancelled" in out
    assert "sandbox" not in out

    code, out, err = await run_kiln_async(["resume", build_id], env)
    record = await store.get(build_id)
    assert record is not None and record.state == "cancelled", err
    [remote] = emulator.image_builds()
    assert remote["status"] == "cancelled"
    assert emulator.live_sandboxes() == []


async def test_kiln_reap_leaves_a_stale_cas_build_to_resume(
    store_url: str, store: Store, emulator: EmulatorClient, tmp_path: Path
) -> None:
    build_id = await stale_cas_build(store, emulator)
    before = await store.get(build_id)
    assert before is not None
    env = kiln_env(tmp_path, store_url=store_url, token=TEST_TOKEN)

    # Not an orphaned sandbox: the builder sandbox is the service's, not the build's.
    assert await reap(store, secrets=Secrets(api_key=TEST_TOKEN), abandoned_after_s=0) == []
    [unattended] = await unattended_remote_builds(store)
    assert (unattended.build_id, unattended.state) == (build_id, WAITING)
    code, out, err = await run_kiln_async(["reap"], env)
    assert code == 0, err
    assert "no orphaned builder sandboxes" in out
    [line] = [line for line in out.splitlines() if build_id in line]
    assert f"nobody runs it ({WAITING})" in line
    assert f"its build {before.data['build_id']} on the Image Service may still run" in line
    assert f"`kiln cancel {build_id}` then `kiln resume {build_id}`" in line
    after = await store.get(build_id)
    assert after is not None and (after.state, after.version) == (WAITING, before.version)
    [remote] = emulator.image_builds()
    assert remote["status"] not in ("succeeded", "failed", "cancelled")
    assert [s["image"] for s in emulator.live_sandboxes()] == ["tensorlake/image-builder:emulated"]

    # It is still there to be resumed (here cancelled) onto the same remote build.
    await store.request_cancel(build_id)
    code, out, err = await run_kiln_async(["resume", build_id], env)
    assert [b["status"] for b in emulator.image_builds()] == ["cancelled"]


async def test_a_worker_ends_an_unloadable_cas_build_by_the_cas_machine(
    store: Store, emulator: EmulatorClient
) -> None:
    build_id = await stale_cas_build(store, emulator)
    # Written by a newer kiln: unreadable here, though its machine and state name are known.
    await rewrite_record(store, build_id, {}, schema_version=10_000)
    worker = Worker(store, WORKER, api_key=TEST_TOKEN)
    running = asyncio.create_task(worker.run())

    async def ended() -> bool:
        record = await store.get(build_id)
        return record is not None and record.final

    try:
        await wait_until(ended, timeout_s=30)
    finally:
        worker.drain()
        await running
    record = await store.get(build_id)
    assert record is not None
    assert record.state == SPEC.interventions[Trigger.UNREADABLE].dest
    transitions = [e.data for e in await store.events(build_id) if e.kind == "transition"]
    last = transitions[-1]
    assert (last["source"], last["trigger"]) == (WAITING, Trigger.UNREADABLE.value)
