"""Resuming from a persisted state, keepalive, and the chunked-upload fallback."""

from __future__ import annotations

import importlib

import httpx
import pytest

from kiln.machine import BuildState
from kiln.machine.handlers import builder as builder_handler
from kiln.testing import EmulatorClient
from support.emulator import builder_starts
from support.machine import LoseFirstAnswer, run_to_end, start_run

# The module, not the handler of the same name that kiln.machine.handlers exports.
upload_module = importlib.import_module("kiln.machine.handlers.upload")


class Crash(BaseException):
    """Stands for the process dying: nothing in the driver may catch it."""


def crash_when(condition):  # type: ignore[no-untyped-def]
    """A store hook that saves the state as JSON, then 'crashes' once ``condition`` holds."""
    saved: list[str] = []

    async def persist(state: BuildState) -> None:
        saved.append(state.to_json())
        if condition(state):
            raise Crash

    return persist, saved


async def _crash_then_resume(emulator: EmulatorClient, condition) -> tuple[BuildState, list[str]]:  # type: ignore[no-untyped-def]
    persist, saved = crash_when(condition)
    first = start_run(emulator, persist=persist)
    with pytest.raises(Crash):
        await first.finish()
    resumed = BuildState.from_json(saved[-1])
    second = await run_to_end(emulator, state=resumed)
    return second.state, second.states_entered()


async def test_resume_after_a_crash_right_after_create_reuses_the_sandbox(
    emulator: EmulatorClient,
) -> None:
    state, _ = await _crash_then_resume(emulator, lambda s: s.sandbox_id is not None)
    assert state.state == "done"
    assert len(emulator.sandboxes()) == 1


@pytest.mark.cloud
async def test_resume_reattaches_to_the_persisted_builder(emulator: EmulatorClient) -> None:
    emulator.set_builder(duration_ms=200, log_lines=4, line_pace_ms=20)
    state, entered = await _crash_then_resume(emulator, lambda s: s.builder_pid is not None)
    assert state.state == "done"
    assert entered[0] == "read_metadata", "resumed inside run_builder, not before it"
    assert builder_starts(emulator) == 1


@pytest.mark.cloud
async def test_resume_from_a_state_boundary(emulator: EmulatorClient) -> None:
    state, entered = await _crash_then_resume(emulator, lambda s: s.state == "upload")
    assert state.state == "done"
    assert entered[0] == "run_builder"


async def test_keepalive_pings_while_the_builder_runs_and_stops_after(
    emulator: EmulatorClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(builder_handler, "KEEPALIVE_INTERVAL_S", 0.03)
    emulator.set_builder(duration_ms=250, log_lines=1)
    run = await run_to_end(emulator)
    assert run.state.state == "done"
    requests = emulator.requests()
    pings = [i for i, r in enumerate(requests) if r["path"] == "/api/v1/health"]
    assert pings, "the sandbox was kept alive"
    complete = next(i for i, r in enumerate(requests) if r["path"].endswith("/complete"))
    assert max(pings) < complete, "the keepalive stopped when the builder returned"


class RefuseChunkedUploads(httpx.AsyncBaseTransport):
    """A proxy that answers 411 to a chunked PUT, as some do."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.refused = 0
        self.sized_puts = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT" and "transfer-encoding" in request.headers:
            self.refused += 1
            return httpx.Response(411, text="Length Required", request=request)
        if request.method == "PUT" and "content-length" in request.headers:
            self.sized_puts += 1
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_a_refused_chunked_upload_is_spooled_and_sent_with_a_length(
    emulator: EmulatorClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A context too large to archive in memory first is streamed (chunked) at first.
    monkeypatch.setattr(upload_module, "IN_MEMORY_CONTEXT_BYTES", 0)
    transport = RefuseChunkedUploads()
    run = await run_to_end(emulator, transport=transport)
    assert run.state.state == "done"
    assert transport.refused == 1
    assert run.state.chunked_upload_refused
    assert transport.sized_puts == 2, "the spooled archive and spec.json"
    uploads = [m for m in run.messages("status") if m.startswith("Uploading build context archive")]
    assert uploads[-1].startswith("Uploading build context archive: 100%")


@pytest.mark.cloud
async def test_a_complete_whose_answer_was_lost_is_recognised(emulator: EmulatorClient) -> None:
    transport = LoseFirstAnswer(lambda r: r.url.path.endswith("/complete"))
    run = await run_to_end(emulator, transport=transport)
    assert transport.lost == 1
    assert run.state.state == "done", run.state.error
    templates = emulator.templates()
    assert len(templates) == 1
    assert run.state.result is not None and run.state.result["id"] == templates[0]["id"]
    completes = [r for r in emulator.requests() if r["path"].endswith("/complete")]
    assert [r["status"] for r in completes] == [200, 409]
