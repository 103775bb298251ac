"""kiln's library API: coroutines, the Build handle, blocking wrappers, events and logs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import structlog

import kiln
from kiln.builds._build import EVENT_BATCH_MAX
from kiln.emulator import Emulator, EmulatorConfig
from kiln.errors import (
    BuildCancelled,
    BuildFailed,
    ConfigError,
    PlanError,
    UsageError,
    WithDiagnostics,
)
from kiln.store import MemoryStore
from kiln.testing import TEST_TOKEN, EmulatorClient
from support.paths import HELLO
from support.polling import wait_until


@pytest.fixture
def emulator(pooled_emulator: EmulatorClient) -> EmulatorClient:
    return pooled_emulator


async def test_build_image_returns_the_template_and_reports_events(
    emulator: EmulatorClient,
) -> None:
    events: list[kiln.Event] = []
    template = await kiln.build_image(
        HELLO, api_url=emulator.url, api_key=TEST_TOKEN, on_event=events.append
    )
    assert template.name == "hello"
    assert isinstance(template, kiln.Template)
    assert template.public is False
    assert template.id.startswith("tmpl-") and template.snapshot_id
    assert template.snapshot_size_bytes is not None and template.snapshot_size_bytes > 0
    assert template.to_dict() == {
        "id": template.id,
        "name": "hello",
        "snapshot_id": template.snapshot_id,
        "snapshot_size_bytes": template.snapshot_size_bytes,
        "public": False,
    }
    assert {type(e) for e in events} >= {
        kiln.StatusEvent,
        kiln.BuildLogEvent,
        kiln.TransitionEvent,
    }
    assert events[0] == kiln.StatusEvent("Loading Dockerfile...")
    dicts = [e.to_dict() for e in events]
    assert kiln.StatusEvent("Selected image name: hello") in events
    assert all(d["stream"] in ("stdout", "stderr") for d in dicts if d["type"] == "build_log")


async def test_the_handle_streams_events_and_awaits_the_result(emulator: EmulatorClient) -> None:
    build = kiln.start_build(HELLO, name="greeter", api_url=emulator.url, api_key=TEST_TOKEN)
    seen = [event async for event in build.events()]
    template = await build.result()
    assert template.name == "greeter"
    assert build.state.state == "done"
    transitions = [e for e in seen if isinstance(e, kiln.TransitionEvent)]
    assert transitions[-1].dest == "done"
    assert all(t.duration_s >= 0 for t in transitions)


async def test_event_batches_give_every_event_in_order_as_events_does(
    emulator: EmulatorClient,
) -> None:
    emulator.set_builder(log_lines=3000, line_pace_ms=0)
    delivered: list[kiln.Event] = []
    build = kiln.start_build(
        HELLO, api_url=emulator.url, api_key=TEST_TOKEN, on_event=delivered.append
    )
    batches = [batch async for batch in build.event_batches()]
    await build.result()
    assert all(0 < len(batch) <= EVENT_BATCH_MAX for batch in batches)
    assert [event for batch in batches for event in batch] == delivered
    logs = [e for batch in batches for e in batch if isinstance(e, kiln.BuildLogEvent)]
    assert len(logs) >= 3000
    assert len(batches) < len(logs), "a fast log comes in lists of many lines"


class _CountingStore(MemoryStore):
    """A store that counts the writes carrying events, and the events they carry."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.logged = 0

    async def commit_transition(self, id: str, **kwargs: Any) -> Any:
        events = kwargs["events"]
        if events:
            self.writes += 1
            self.logged += sum(1 for kind, _data in events if kind == "build_log")
        return await super().commit_transition(id, **kwargs)


async def test_a_fast_log_reaches_the_store_in_a_few_writes(emulator: EmulatorClient) -> None:
    emulator.set_builder(log_lines=3000, line_pace_ms=0)
    store = _CountingStore()
    build = kiln.start_build(HELLO, api_url=emulator.url, api_key=TEST_TOKEN, store=store)
    await build.result()
    assert store.logged >= 3000, "every line is recorded (the store keeps its bounded part)"
    # A write per transition and per beat of the session, not one per line.
    assert store.writes < 100


async def test_import_image(emulator: EmulatorClient) -> None:
    events: list[kiln.Event] = []
    template = await kiln.import_image(
        "python:3.12-slim", api_url=emulator.url, api_key=TEST_TOKEN, on_event=events.append
    )
    assert template.name == "python"
    assert events[0] == kiln.StatusEvent("Importing registry image python:3.12-slim...")


async def test_cancel_through_the_handle_raises_build_cancelled(emulator: EmulatorClient) -> None:
    emulator.set_builder(duration_ms=10_000, log_lines=1)
    build = kiln.start_build(HELLO, api_url=emulator.url, api_key=TEST_TOKEN)
    await wait_until(lambda: build.state.builder_pid is not None)
    build.cancel()
    with pytest.raises(BuildCancelled):
        await build.result()
    assert build.state.state == "cancelled"
    assert build.state.sandbox_deleted


async def test_a_failed_build_raises_the_decorated_error(emulator: EmulatorClient) -> None:
    emulator.set_builder(oom_kill=True)
    build = kiln.start_build(HELLO, api_url=emulator.url, api_key=TEST_TOKEN)
    with pytest.raises(BuildFailed) as caught:
        await build.result()
    assert caught.value.sandbox_id == build.state.sandbox_id
    assert isinstance(caught.value.source, WithDiagnostics)
    assert "ran out of memory" in str(caught.value)


async def test_a_broken_callback_does_not_break_the_build(emulator: EmulatorClient) -> None:
    def explode(event: kiln.Event) -> None:
        raise RuntimeError("callback bug")

    template = await kiln.build_image(
        HELLO, api_url=emulator.url, api_key=TEST_TOKEN, on_event=explode
    )
    assert template.name == "hello"


async def test_a_missing_dockerfile_is_a_plan_error_at_once(tmp_path: Path) -> None:
    with pytest.raises(PlanError):
        kiln.start_build(tmp_path / "nope" / "Dockerfile", api_key=TEST_TOKEN)


async def test_missing_credentials_fail_before_any_request(
    emulator: EmulatorClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("TENSORLAKE_API_KEY", "TENSORLAKE_PAT"):
        monkeypatch.delenv(name, raising=False)
    build = kiln.start_build(HELLO, api_url=emulator.url)
    with pytest.raises(ConfigError):
        await build.result()
    assert build.state.state == "failed"
    assert emulator.requests() == []


async def test_events_are_logged_with_the_build_context(emulator: EmulatorClient) -> None:
    with structlog.testing.capture_logs() as logs:
        await kiln.build_image(HELLO, api_url=emulator.url, api_key=TEST_TOKEN)
    running = [entry for entry in logs if entry.get("state") == "run_builder"]
    assert running, "handler events are logged with the state they happened in"
    assert all(entry["build_id"] and entry["sandbox_id"] for entry in running)
    assert not any(TEST_TOKEN in repr(entry) for entry in logs)


async def test_build_log_lines_are_logged_with_the_build_context(
    emulator: EmulatorClient,
) -> None:
    emulator.set_builder(log_lines=5)
    with structlog.testing.capture_logs() as logs:
        await kiln.build_image(HELLO, api_url=emulator.url, api_key=TEST_TOKEN)
    lines = [entry for entry in logs if entry["event"] == "build_log"]
    assert len(lines) >= 5, "structlog listening at INFO hears every line"
    assert all(entry["state"] == "run_builder" and entry["id"] for entry in lines)


def test_blocking_wrappers_work_without_a_loop(tmp_path: Path) -> None:
    with Emulator(EmulatorConfig(data_dir=tmp_path / "emu")) as emu:
        template = kiln.build_image_sync(HELLO, api_url=emu.url, api_key=TEST_TOKEN)
        imported = kiln.import_image_sync("busybox:1.36", api_url=emu.url, api_key=TEST_TOKEN)
        with EmulatorClient(emu.url) as client:
            assert client.live_sandboxes() == []
    assert template.name == "hello"
    assert imported.name == "busybox"


async def test_a_result_awaited_with_a_timeout_does_not_cancel_the_build(
    emulator: EmulatorClient,
) -> None:
    emulator.set_builder(duration_ms=300, log_lines=1)
    build = kiln.start_build(HELLO, api_url=emulator.url, api_key=TEST_TOKEN)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(build.result(), timeout=0.05)
    assert (await build.result()).name == "hello"


def test_a_handle_outside_an_event_loop_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="running event loop"):
        kiln.start_build(HELLO, api_key=TEST_TOKEN)


SILENT_FAILURE_SCRIPT = """
import sys
import kiln
from kiln.emulator import Emulator, EmulatorConfig
from kiln.testing import EmulatorClient

with Emulator(EmulatorConfig(data_dir=sys.argv[2])) as emulator:
    EmulatorClient(emulator.url).set_builder(exit_code=1)
    try:
        kiln.build_image_sync(sys.argv[1], api_url=emulator.url, api_key="token")
    except kiln.BuildFailed:
        pass
    else:
        sys.exit("the build did not fail")
"""


def test_the_library_is_silent_unless_logging_is_configured(tmp_path: Path) -> None:
    """A failed build says nothing on stderr in an application that configured no logging
    (Python's last-resort handler printed `event='build failed'` for the library's warning)."""
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", SILENT_FAILURE_SCRIPT, str(HELLO), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""
    assert run.stderr == ""
