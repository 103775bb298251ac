"""Resume from every state of the machine: a build whose process died continues from the store,
on SQLite and on PostgreSQL, with one builder, one context upload and no sandbox left behind."""

from __future__ import annotations

import contextlib

import pytest

from kiln import Template, resume
from kiln.durable import SANDBOX_LOST, Session, UnreadableBuild
from kiln.errors import BuildError, ConfigError, KilnError
from kiln.machine import load_machine_spec
from kiln.store import OwnedElsewhere, Owner, Store
from kiln.testing import TEST_TOKEN, EmulatorClient
from support.durable import FAST_POLL_S, crash_in, raw_store_text, rewrite_record, start
from support.emulator import builder_starts, command_runs
from support.polling import wait_until

SPEC = load_machine_spec()
ALL_STATES = list(SPEC.states)


async def _resume_to_end(store: Store, build_id: str, **options: object) -> Template:
    build = await resume(build_id, store=store, api_key=TEST_TOKEN, **options)  # type: ignore[arg-type]
    return await build.result()


@pytest.mark.parametrize("crashed_in", ALL_STATES)
async def test_a_build_crashed_in_any_state_resumes_to_done(
    store: Store, emulator: EmulatorClient, crashed_in: str
) -> None:
    build_id = await crash_in(store, emulator.url, lambda s: s.state == crashed_in)
    record = await store.get(build_id)
    assert record is not None and record.state == crashed_in and not record.final

    template = await _resume_to_end(store, build_id)

    record = await store.get(build_id)
    assert record is not None and record.state == "done" and record.final
    assert record.owner is None, "the lease is released at the end"
    assert template.name == "hello"
    assert builder_starts(emulator) == 1
    assert command_runs(emulator, "tar") == 1, "the context is extracted exactly once"
    assert emulator.live_sandboxes() == []
    kinds = [e.kind for e in await store.events(build_id)]
    assert "resumed" in kinds


@pytest.mark.parametrize("crashed_in", ["prepare", "create_sandbox"])
async def test_phases_before_the_sandbox_exist_are_repeated_not_duplicated(
    store: Store, emulator: EmulatorClient, crashed_in: str
) -> None:
    build_id = await crash_in(store, emulator.url, lambda s: s.state == crashed_in)
    await _resume_to_end(store, build_id)
    assert len(emulator.sandboxes()) == 1, "one builder sandbox for the whole build"


@pytest.mark.parametrize("outcome", ["done", "failed", "cancelled"])
async def test_a_build_in_a_final_state_is_reported_not_rerun(
    store: Store, emulator: EmulatorClient, outcome: str
) -> None:
    emulator.set_builder(exit_code=3 if outcome == "failed" else 0, duration_ms=300)
    build = start(store, emulator.url)
    if outcome == "cancelled":
        await wait_until(lambda: build.state.builder_pid is not None)
        build.cancel()
    with contextlib.suppress(KilnError):
        await build.result()
    record = await store.get(build.state.id)
    assert record is not None and record.state == outcome and record.final
    sent = len(emulator.requests())

    again = await resume(build.state.id, store=store, api_key=TEST_TOKEN)

    if outcome == "done":
        assert (await again.result()).response == record.data["result"]
    else:
        with pytest.raises(KilnError, match=r"exit|cancelled"):
            await again.result()
    assert len(emulator.requests()) == sent, "nothing is sent for a finished build"
    assert builder_starts(emulator) == 1


async def test_a_retried_upload_then_a_crash_extracts_the_context_once(
    store: Store, emulator: EmulatorClient
) -> None:
    # spec.json's PUT fails once: upload sends both again; the build dies before its process
    # starts. The resumed build starts the one process that extracts the context.
    emulator.add_fault({"status": 502}, method="PUT", path="/api/v1/files", times=1, after=1)
    build_id = await crash_in(store, emulator.url, lambda s: s.state == "run_builder")

    await _resume_to_end(store, build_id)

    assert command_runs(emulator, "tar") == 1
    assert builder_starts(emulator) == 1
    assert emulator.live_sandboxes() == []


async def test_a_running_builder_is_reattached_with_no_line_delivered_twice(
    store: Store, emulator: EmulatorClient
) -> None:
    emulator.set_builder(log_lines=12, line_pace_ms=60)
    session = Session(store, poll_s=FAST_POLL_S)
    build = start(store, emulator.url, session)

    async def builder_running_with_lines_persisted() -> bool:
        record = await store.get(build.state.id)
        if record is None or record.data.get("builder_pid") is None:
            return False
        return record.data["output_events_delivered"] >= 3

    await wait_until(builder_running_with_lines_persisted)
    # The process stops where it stands, without cleanup, as a crash would leave it.
    await session.stop(build.state, "test: the process dies")
    with pytest.raises(KilnError):
        await build.result()

    await _resume_to_end(store, build.state.id)

    lines = [e.data["message"] for e in await store.events(build.state.id) if e.kind == "build_log"]
    assert len(lines) == len(set(lines)), "no log line is delivered twice"
    assert "progress 12/12" in lines and any(line.startswith("Step 1/") for line in lines)
    assert builder_starts(emulator) == 1
    assert emulator.live_sandboxes() == []


async def test_a_lost_sandbox_fails_the_build_with_a_clear_message(
    store: Store, emulator: EmulatorClient
) -> None:
    build_id = await crash_in(store, emulator.url, lambda s: s.state == "run_builder")
    _delete_all_sandboxes(emulator)

    with pytest.raises(BuildError, match="is gone") as caught:
        await _resume_to_end(store, build_id)

    assert "--retry-lost-sandbox" in (caught.value.hint or "")
    record = await store.get(build_id)
    assert record is not None and record.state == "failed"
    assert record.data["error"]["kind"] == SANDBOX_LOST
    assert builder_starts(emulator) == 0
    assert ("run_builder", "sandbox_lost", "cleanup") in await _transitions(store, build_id)


async def test_retry_lost_sandbox_starts_over_from_prepare(
    store: Store, emulator: EmulatorClient
) -> None:
    build_id = await crash_in(store, emulator.url, lambda s: s.state == "read_metadata")
    _delete_all_sandboxes(emulator)

    await _resume_to_end(store, build_id, retry_lost_sandbox=True)

    record = await store.get(build_id)
    assert record is not None and record.state == "done"
    assert len(emulator.sandboxes()) == 2, "a second builder sandbox replaced the lost one"
    assert record.sandbox_id != emulator.sandboxes()[0]["sandbox_id"]
    assert emulator.live_sandboxes() == []
    assert ("read_metadata", "start_over", "prepare") in await _transitions(store, build_id)


async def _transitions(store: Store, build_id: str) -> list[tuple[str, str, str]]:
    """The build's logged transitions, the declared interventions' included."""
    return [
        (e.data["source"], e.data["trigger"], e.data["dest"])
        for e in await store.events(build_id)
        if e.kind == "transition"
    ]


async def test_resume_refuses_a_build_whose_owner_is_alive(
    store: Store, emulator: EmulatorClient
) -> None:
    owner = Owner.current("the-live-one")
    build_id = await crash_in(store, emulator.url, lambda s: s.state == "upload")
    await store.acquire(build_id, owner, lease_s=60)

    with pytest.raises(OwnedElsewhere, match="the-live-one"):
        await resume(build_id, store=store, api_key=TEST_TOKEN)

    await store.release(build_id, owner)
    await _resume_to_end(store, build_id)


async def test_a_cancel_recorded_while_nobody_ran_the_build_ends_it_cancelled(
    store: Store, emulator: EmulatorClient
) -> None:
    build_id = await crash_in(store, emulator.url, lambda s: s.state == "run_builder")
    assert await store.request_cancel(build_id)

    build = await resume(build_id, store=store, api_key=TEST_TOKEN)
    with pytest.raises(KilnError, match="cancelled"):
        await build.result()

    record = await store.get(build_id)
    assert record is not None and record.state == "cancelled"
    assert builder_starts(emulator) == 0
    assert emulator.live_sandboxes() == []


async def test_credentials_are_never_persisted(
    store: Store, store_url: str, emulator: EmulatorClient
) -> None:
    build_id = await crash_in(store, emulator.url, lambda s: s.state == "run_builder")
    await _resume_to_end(store, build_id)

    assert TEST_TOKEN not in await raw_store_text(store_url)
    assert build_id in await raw_store_text(store_url), "the dump does see the build"


def _delete_all_sandboxes(emulator: EmulatorClient) -> None:
    import httpx

    for sandbox in emulator.live_sandboxes():
        url = (
            f"{emulator.url}/v1/namespaces/{sandbox['namespace']}/sandboxes/{sandbox['sandbox_id']}"
        )
        response = httpx.delete(url, headers={"Authorization": f"Bearer {TEST_TOKEN}"})
        assert response.status_code < 300, response.text


async def test_resume_without_credentials_refuses_and_leaves_the_build_as_it_was(
    store: Store, emulator: EmulatorClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("TENSORLAKE_API_KEY", "TENSORLAKE_PAT"):
        monkeypatch.delenv(name, raising=False)
    build_id = await crash_in(store, emulator.url, lambda s: s.state == "prepare")
    before = await store.get(build_id)

    with pytest.raises(ConfigError, match="credentials"):
        await resume(build_id, store=store)

    after = await store.get(build_id)
    assert before is not None and after is not None
    assert (after.state, after.data, after.owner) == (before.state, before.data, None)
    await _resume_to_end(store, build_id)


@pytest.mark.parametrize(
    ("schema_version", "damage", "message"),
    [(99, {}, "newer kiln"), (1, {"plan": "not a plan"}, "cannot be read")],
)
async def test_a_record_kiln_cannot_load_is_refused_with_a_clear_error(
    store: Store,
    emulator: EmulatorClient,
    schema_version: int,
    damage: dict[str, object],
    message: str,
) -> None:
    build_id = await crash_in(store, emulator.url, lambda s: s.state == "prepare")
    await rewrite_record(store, build_id, damage, schema_version=schema_version)

    with pytest.raises(UnreadableBuild, match=message):
        await resume(build_id, store=store, api_key=TEST_TOKEN)

    after = await store.get(build_id)
    assert after is not None and after.owner is None, "the build is not left held"


async def test_a_build_resumed_past_its_deadline_and_grace_still_deletes_its_sandbox(
    store: Store, emulator: EmulatorClient
) -> None:
    """A build whose overall deadline (and the cleanup state's grace after it) ran out while no
    process ran it: the resume fails it, and cleanup still gets its grace to delete the sandbox
    (it used to give up before its first attempt, leaving the sandbox to `kiln reap`)."""
    build_id = await crash_in(store, emulator.url, lambda s: s.state == "run_builder")
    record = await store.get(build_id)
    assert record is not None
    options = {**record.data["options"], "deadline_s": 60.0}
    expired = record.data["created_at"] - 3600.0
    await rewrite_record(store, build_id, {"deadline_at": expired, "options": options})
    with pytest.raises(KilnError) as raised:
        await _resume_to_end(store, build_id)
    assert "deadline" in str(raised.value)
    record = await store.get(build_id)
    assert record is not None and record.state == "failed"
    assert emulator.live_sandboxes() == [], "the resumed cleanup deleted the builder sandbox"
