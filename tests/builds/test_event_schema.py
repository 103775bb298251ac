"""Every event the library emits, whatever the outcome, matches docs/events.schema.json: the
same schema as the CLI's --json lines (tests/cli checks those), with kiln's build id on every
event and the platform's on every event once it is known."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import kiln
from kiln.errors import BuildCancelled, BuildFailed
from kiln.store import open_store
from kiln.testing import TEST_TOKEN, EmulatorClient
from support.events import check_event
from support.machine import EmulatorPool
from support.paths import HELLO
from support.polling import wait_until


@pytest.fixture
def emulator(emulator_pool: EmulatorPool) -> Iterator[EmulatorClient]:
    with emulator_pool.running() as emulator:
        yield emulator


def _checked(build: kiln.Build, events: list[kiln.Event]) -> list[dict[str, object]]:
    dicts = [check_event(event.to_dict()) for event in events]
    assert dicts, "the build emitted no event"
    assert all(d["id"] == build.state.id for d in dicts)
    if build.state.build_id is None:
        # A cached build asked the platform for no build: there is no id to name.
        assert all(d["build_id"] is None for d in dicts)
        return dicts
    known = next(i for i, d in enumerate(dicts) if d["build_id"] is not None)
    assert all(d["build_id"] == build.state.build_id for d in dicts[known:])
    return dicts


async def test_a_done_build_emits_only_events_of_the_schema(emulator: EmulatorClient) -> None:
    events: list[kiln.Event] = []
    build = kiln.start_build(
        HELLO, api_url=emulator.url, api_key=TEST_TOKEN, on_event=events.append
    )
    await build.result()
    kinds = {d["type"] for d in _checked(build, events)}
    assert {"status", "build_log", "transition"} <= kinds


async def test_a_failed_build_emits_only_events_of_the_schema(emulator: EmulatorClient) -> None:
    emulator.set_builder(exit_code=3)
    events: list[kiln.Event] = []
    build = kiln.start_build(
        HELLO, api_url=emulator.url, api_key=TEST_TOKEN, on_event=events.append
    )
    with pytest.raises(BuildFailed):
        await build.result()
    _checked(build, events)


async def test_a_cancelled_build_emits_only_events_of_the_schema(emulator: EmulatorClient) -> None:
    emulator.set_builder(duration_ms=10_000, log_lines=1)
    events: list[kiln.Event] = []
    build = kiln.start_build(
        HELLO, api_url=emulator.url, api_key=TEST_TOKEN, on_event=events.append
    )
    await wait_until(lambda: build.state.builder_pid is not None)
    build.cancel()
    with pytest.raises(BuildCancelled):
        await build.result()
    _checked(build, events)


def test_an_event_made_by_hand_matches_the_schema_too() -> None:
    event = check_event(kiln.WarningEvent("careful").to_dict())
    assert (event["id"], event["build_id"]) == (None, None)


async def test_a_cached_build_emits_only_events_of_the_schema(emulator: EmulatorClient) -> None:
    store = open_store("memory://")
    try:
        first = kiln.start_build(HELLO, api_url=emulator.url, api_key=TEST_TOKEN, store=store)
        await first.result()
        events: list[kiln.Event] = []
        build = kiln.start_build(
            HELLO, api_url=emulator.url, api_key=TEST_TOKEN, store=store, on_event=events.append
        )
        await build.result()
    finally:
        await store.close()
    kinds = {d["type"] for d in _checked(build, events)}
    assert "cached" in kinds and "build_log" not in kinds
    assert build.state.build_id is None
