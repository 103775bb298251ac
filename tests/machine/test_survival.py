"""Issue 10, part 2: kiln survives what the cloud does to a build (the reproductions, scaled down).

Silent builders whose follow streams are dropped, follow streams that stay open after the builder
exited, a long pending window, run streams that end without an exit event. Each test failed
before the fix it names.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from kiln.machine import load_machine_spec
from kiln.testing import EmulatorClient
from support.machine import EmulatorPool, fast_spec, run_to_end

FOLLOW = r"/output/follow$"
PROCESS_STATUS = r"^/api/v1/processes/\d+$"
SANDBOX_GET = r"/sandboxes/[^/]+$"
# Generous: a build that should survive ends in a few seconds; one that hangs is cut here.
HANG_LIMIT_S = 60.0
# The module, not the handler of the same name that kiln.machine.handlers exports.
upload_module = importlib.import_module("kiln.machine.handlers.upload")


@pytest.mark.cloud
async def test_a_silent_builder_whose_streams_keep_ending_is_followed_until_it_exits(
    emulator: EmulatorClient,
) -> None:
    # Scaled from a 30-40 s silent builder behind a balancer that closes streams: every follow
    # ends at once with nothing new. The build's budget must not run out while the builder lives.
    emulator.set_builder(duration_ms=2500)
    emulator.add_fault({"cut_stream_after": 0}, method="GET", path=FOLLOW, times=1000)
    run = await run_to_end(emulator)
    assert run.state.state == "done", run.state.error
    follows = [r for r in emulator.requests() if r["path"].endswith("/output/follow")]
    assert len(follows) >= 2
    assert run.state.attempts["run_builder"] == 1, "clean stream ends are no failures"


def _growing_cuts(count: int, step: int) -> list[dict[str, object]]:
    """Follow faults that each let ``step`` more lines through than the one before, then end."""
    return [{"cut_stream_after": step * (index + 1)} for index in range(count)]


@pytest.mark.cloud
async def test_failures_after_progress_do_not_spend_the_builder_budget(
    emulator: EmulatorClient,
) -> None:
    # Each follow delivers new lines, ends, and then the status read fails: more failures than
    # the budget of 10, but every one of them came after progress.
    failures = load_machine_spec().states["run_builder"].attempts + 3
    emulator.set_builder(duration_ms=3000, log_lines=3 * (failures + 2), line_pace_ms=60)
    for action in _growing_cuts(failures, 2):
        emulator.add_fault(action, method="GET", path=FOLLOW, times=1)
    emulator.add_fault({"status": 502}, method="GET", path=PROCESS_STATUS, times=failures)
    run = await run_to_end(emulator)
    assert run.state.state == "done", run.state.error
    retries = [s for s, t, _ in run.transitions() if t == "retry" and s == "run_builder"]
    assert len(retries) == failures


async def test_failures_without_progress_still_spend_the_budget(emulator: EmulatorClient) -> None:
    emulator.set_builder(duration_ms=5000)
    emulator.add_fault({"status": 502}, method="GET", path=FOLLOW, times=1000)
    run = await run_to_end(emulator)
    assert run.state.state == "failed"
    assert run.state.error is not None and run.state.error.phase == "run_builder"
    assert run.state.attempts["run_builder"] == load_machine_spec().states["run_builder"].attempts


class StreamsStayOpen(httpx.AsyncBaseTransport):
    """A proxy whose follow streams never close: after the real stream's end, only keepalive
    comments, forever."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if not request.url.path.endswith("/output/follow"):
            return response
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_NeverEnding(response),
            request=request,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


class _NeverEnding(httpx.AsyncByteStream):
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._response.aiter_raw():
            yield chunk
        while True:
            await asyncio.sleep(0.05)
            yield b": keepalive\r\n\r\n"

    async def aclose(self) -> None:
        await self._response.aclose()


async def test_a_follow_stream_open_after_the_builder_exited_does_not_hold_the_build(
    emulator: EmulatorClient,
) -> None:
    emulator.set_builder(duration_ms=200, log_lines=2)
    spec = fast_spec(run_builder={"silence_s": 0.3})
    async with asyncio.timeout(HANG_LIMIT_S):
        run = await run_to_end(emulator, spec=spec, transport=StreamsStayOpen())
    assert run.state.state == "done", run.state.error
    assert len(run.messages("build_log")) >= 2


async def test_transient_errors_while_pending_are_retried_for_the_reference_window(
    emulator_pool: EmulatorPool,
) -> None:
    # 30 gateway errors in a row while the sandbox starts: the reference polls through 120 s
    # of them (every second); kiln's old budget of 10 attempts gave up after about 25 s.
    with emulator_pool.running(start_delay_ms=200) as admin:
        admin.add_fault(
            {"status": 502, "body": "PROXY_ERROR: Failed to proxy request"},
            method="GET",
            path=SANDBOX_GET,
            times=30,
        )
        run = await run_to_end(admin)
        assert run.state.state == "done", run.state.error
        assert run.state.attempts["wait_running"] == 31


def test_the_declared_pending_window_is_the_reference_one() -> None:
    spec = load_machine_spec()
    wait = spec.states["wait_running"]
    assert wait.deadline_s == 120
    backoff = spec.backoff_of("wait_running")
    # Quick at first (the cloud's 502s while a route is programmed are short), then every second
    # as the reference polls.
    assert [backoff.delay(n) for n in (1, 2, 3, 4, 5, 50)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    # The deadline, not the attempt count, ends the window.
    assert wait.deadline_s is not None
    assert sum(backoff.delay(n) for n in range(1, wait.attempts)) > wait.deadline_s


async def test_follow_streams_that_never_show_the_end_fall_back_to_the_status_and_the_file(
    emulator: EmulatorClient,
) -> None:
    # Every follow is cut after its first event, so the end marker and the printed metadata are
    # never seen: the exit status comes from the process, the metadata from metadata.json.
    emulator.add_fault({"cut_stream_after": 1}, method="GET", path=FOLLOW, times=1000)
    async with asyncio.timeout(HANG_LIMIT_S):
        run = await run_to_end(emulator)
    assert run.state.state == "done", run.state.error
    assert run.state.builder_metadata is None
    requests = emulator.requests()
    assert any(r["method"] == "GET" and re.search(PROCESS_STATUS, r["path"]) for r in requests)
    reads = [r for r in requests if r["method"] == "GET" and r["path"] == "/api/v1/files"]
    assert len(reads) == 1, "metadata.json, read once"


class CorruptContext(httpx.AsyncBaseTransport):
    """Replaces the context archive on its way to the sandbox with bytes tar cannot read."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT" and "context" in request.url.params.get("path", ""):
            await request.aread()  # the archive is produced as it is read: let it finish
            headers = {
                k: v
                for k, v in request.headers.items()
                if k.lower() not in ("transfer-encoding", "content-length")
            }
            request = httpx.Request("PUT", request.url, headers=headers, content=b"not a tarball")
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.mark.cloud
async def test_a_failed_remote_command_says_what_it_printed(emulator: EmulatorClient) -> None:
    run = await run_to_end(emulator, transport=CorruptContext())
    assert run.state.state == "failed"
    # The builder's process extracts the context: its tar step failed, in the reference's words.
    assert run.state.error is not None and run.state.error.phase == "run_builder"
    message = run.state.error.message
    assert "Command 'tar' failed with exit code 2" in message
    assert "does not look like a tar archive" in message, message
    stderr = [e.message for e in run.events if e.type == "build_log" and e.stream == "stderr"]  # type: ignore[union-attr]
    assert any("does not look like a tar archive" in line for line in stderr)


class RunBodies(httpx.AsyncBaseTransport):
    """Records the payload of every one-shot run."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.payloads: list[dict[str, object]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/processes/run":
            self.payloads.append(json.loads(await request.aread()))
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_a_split_contexts_extractions_carry_a_timeout(
    emulator: EmulatorClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One part per file: each part is extracted by a one-shot root process with a timeout.
    monkeypatch.setattr(upload_module, "PART_BYTES", 1)
    spy = RunBodies()
    run = await run_to_end(emulator, transport=spy)
    assert run.state.state == "done", run.state.error
    assert len(spy.payloads) >= 2
    assert all(p["command"] == "/bin/sh" and p["user"] == "root" for p in spy.payloads)
    assert all(isinstance(p.get("timeout"), float) and p["timeout"] > 0 for p in spy.payloads)


async def test_a_small_build_runs_no_one_shot_command(emulator: EmulatorClient) -> None:
    spy = RunBodies()
    run = await run_to_end(emulator, transport=spy)
    assert run.state.state == "done", run.state.error
    assert spy.payloads == [], "no mkdir or chmod before the uploads, no separate tar"
