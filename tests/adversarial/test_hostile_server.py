"""Hostile or broken servers: responses and stream lines are bounded (a clear error naming the
endpoint, memory kept small), a --deadline failure keeps the last real error and names the ids,
retries carry their reason, cleanup stops a stated grace after the deadline, and an API URL with
credentials in it is refused before anything is sent or stored."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from kiln import start_build
from kiln.api import ApiSettings, PlatformClient, ProxyClient, create_http_client
from kiln.errors import ConfigError, PhaseTimeout, ResponseError
from kiln.machine import BuildOptions, TransitionEvent, WarningEvent, load_machine_spec
from kiln.store import MemoryStore
from kiln.testing import TEST_TOKEN, EmulatorClient, run_build
from support.paths import HELLO
from support.processes import kiln_env, run_kiln

SPEC = load_machine_spec()
# How long cleanup may run past the build's deadline (its declared grace).
CLEANUP_GRACE_S = SPEC.states[SPEC.cleanup or ""].grace_s

API = "https://api.tensorlake.ai"
MIB = 1 << 20
# Far beyond the bound and far below what would hurt this machine if the bound failed.
HUGE_BYTES = 64 * MIB
# Reading stays well under this even though the server sends HUGE_BYTES.
MEMORY_CEILING = 24 * MIB
CHUNK = b"x" * MIB
PASSWORD = "hunter2-in-the-url"
# The deadline test: the upload fails twice (retried), then hangs until the deadline.
DEADLINE_S = 3.0
HUNG_MS = 600_000


def _settings() -> ApiSettings:
    return ApiSettings.from_env({}, api_url=API, api_key=TEST_TOKEN)


async def _endless(total: int) -> AsyncIterator[bytes]:
    for _ in range(total // len(CHUNK)):
        yield CHUNK


def _platform(handler: httpx.MockTransport) -> PlatformClient:
    settings = _settings()
    return PlatformClient(settings, create_http_client(settings, transport=handler))


async def test_a_huge_prepare_response_is_refused_in_bounded_memory() -> None:
    transport = httpx.MockTransport(
        lambda request: httpx.Response(200, content=_endless(HUGE_BYTES))
    )
    tracemalloc.start()
    try:
        with pytest.raises(ResponseError) as raised:
            await _platform(transport).prepare({"name": "x"})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "POST /platform/v1/sandbox-template-builds" in str(raised.value)
    assert "larger than 4 MiB" in str(raised.value)
    assert peak < MEMORY_CEILING, peak


async def test_a_compressed_bomb_is_bounded_by_its_decoded_size() -> None:
    bomb = gzip.compress(b"\0" * HUGE_BYTES)
    transport = httpx.MockTransport(
        lambda request: httpx.Response(200, content=bomb, headers={"Content-Encoding": "gzip"})
    )
    with pytest.raises(ResponseError, match="larger than 4 MiB"):
        await _platform(transport).prepare({"name": "x"})


async def test_an_endless_stream_line_is_refused_naming_the_stream() -> None:
    async def one_line_forever() -> AsyncIterator[bytes]:
        yield b"data: "
        async for chunk in _endless(HUGE_BYTES):
            yield chunk

    transport = httpx.MockTransport(
        lambda request: httpx.Response(
            200, content=one_line_forever(), headers={"Content-Type": "text/event-stream"}
        )
    )
    settings = _settings()
    proxy = ProxyClient.for_sandbox(
        settings,
        create_http_client(settings, transport=transport),
        sandbox_id="sbx-1",
        sandbox_url="https://sbx-1.sandbox.example",
        routing_hint=None,
    )
    tracemalloc.start()
    try:
        with pytest.raises(ResponseError) as raised:
            async for _event in proxy.follow(7):
                pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "GET /api/v1/processes/7/output/follow" in str(raised.value)
    assert "stream line or event larger than 4 MiB" in str(raised.value)
    assert peak < 4 * MEMORY_CEILING, peak


async def test_a_deadline_keeps_the_last_error_names_the_ids_and_retries_say_why(
    kiln_emulator: EmulatorClient,
) -> None:
    put_file = r"^/api/v1/files$"
    # Each upload attempt sends two PUTs side by side (the context and spec.json): four 503s
    # fail two attempts, then every PUT hangs until the deadline.
    kiln_emulator.add_fault({"status": 503}, method="PUT", path=put_file, times=4)
    kiln_emulator.add_fault({"delay_ms": HUNG_MS}, method="PUT", path=put_file, times=None)
    options = BuildOptions(api_url=kiln_emulator.url, deadline_s=DEADLINE_S)
    run = await run_build(kiln_emulator, HELLO, options=options)
    assert run.state.state == "failed"
    error = run.state.error
    assert error is not None and error.kind == "PhaseTimeout"
    assert error.message.startswith("phase 'build' did not finish within its 3s deadline")
    assert f"builder sandbox: {run.state.sandbox_id}" in error.message
    assert f"build: {run.state.build_id}" in error.message
    assert "in phase: upload" in error.message
    assert "last error: PUT /api/v1/files" in error.message and "503" in error.message
    retries = [e for e in run.events if isinstance(e, TransitionEvent) and e.trigger == "retry"]
    assert len(retries) == 2
    for retry in retries:
        assert retry.reason is not None and "503" in retry.reason
        assert retry.to_dict()["reason"] == retry.reason
    assert kiln_emulator.live_sandboxes() == []


async def test_the_live_error_of_a_deadline_has_the_last_error_as_its_cause(
    kiln_emulator: EmulatorClient,
) -> None:
    kiln_emulator.add_fault({"status": 503}, method="POST", path="/sandbox-template-builds$")
    kiln_emulator.add_fault(
        {"delay_ms": HUNG_MS}, method="POST", path="/sandbox-template-builds$", times=None
    )
    build = start_build(HELLO, api_url=kiln_emulator.url, api_key=TEST_TOKEN, deadline=DEADLINE_S)
    with pytest.raises(PhaseTimeout) as raised:
        await build.result()
    assert raised.value.phase == "build" and raised.value.during == "prepare"
    assert isinstance(raised.value.__cause__, Exception)
    assert "503" in str(raised.value.__cause__)


@pytest.mark.slow
async def test_cleanup_gives_up_a_stated_grace_after_the_deadline(
    kiln_emulator: EmulatorClient,
) -> None:
    """A hung DELETE: cleanup stops CLEANUP_GRACE_S after the deadline, with a warning naming
    the sandbox left, instead of waiting out the cleanup phase's own (longer) deadline."""
    kiln_emulator.set_builder(duration_ms=HUNG_MS)
    kiln_emulator.add_fault({"delay_ms": HUNG_MS}, method="DELETE", path="/sandboxes/", times=None)
    options = BuildOptions(api_url=kiln_emulator.url, deadline_s=DEADLINE_S)
    run = await run_build(kiln_emulator, HELLO, options=options)
    assert run.state.state == "failed"
    warnings = [e.message for e in run.events if isinstance(e, WarningEvent)]
    gave_up = f"Gave up deleting rootfs builder sandbox {run.state.sandbox_id}"
    assert any(
        w.startswith(gave_up) and f"within its {CLEANUP_GRACE_S:g}s deadline" in w for w in warnings
    ), warnings


def test_an_api_url_with_credentials_is_refused_before_anything_is_sent(
    tmp_path: Path, kiln_emulator: EmulatorClient
) -> None:
    url = kiln_emulator.url.replace("http://", f"http://kiln:{PASSWORD}@")
    env = kiln_env(tmp_path, token=TEST_TOKEN)
    for command in (["build", str(HELLO)], ["submit", str(HELLO)]):
        done = run_kiln([*command, "--api-url", url], env)
        assert done.returncode == 2, done.stderr
        assert "must not carry a user name or password" in done.stderr
        assert PASSWORD not in done.stdout + done.stderr
    assert kiln_emulator.requests() == []
    listed = run_kiln(["ls", "--json"], env)
    assert json.loads(listed.stdout) == [], listed.stdout


async def test_the_library_refuses_an_api_url_with_credentials_before_storing_it() -> None:
    store = MemoryStore()
    with pytest.raises(ConfigError) as raised:
        start_build(
            HELLO,
            api_url=f"https://kiln:{PASSWORD}@{API.removeprefix('https://')}",
            api_key=TEST_TOKEN,
            store=store,
        )
    assert PASSWORD not in str(raised.value)
    assert await store.list() == []
