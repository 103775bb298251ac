"""Running the emulator: in a thread (sync and async), in-process over ASGI, and from the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Collection
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kiln.cli import main
from kiln.emulator import Emulator, EmulatorConfig, create_app, start_emulator
from kiln.emulator._errors import EXCEPTION_HANDLERS
from kiln.testing import EmulatorClient
from support.paths import REPO
from support.wire import (
    AUTH,
    BUILDER_ARGS,
    CREATE_BODY,
    SANDBOXES,
    SandboxDriver,
    prepare,
    stage_build,
)

CLI_DEADLINE_S = 30.0
# Well under uvicorn's graceful-shutdown backstop: stopping must end streams, not wait them out.
STOP_DEADLINE_S = 3.0


def _emulator_threads(besides: Collection[threading.Thread] = ()) -> list[threading.Thread]:
    """Running emulator threads, except ``besides``: those of emulators that fixtures of a wider
    scope share (whichever ran before in this session), which rightly outlive this test."""
    return [t for t in threading.enumerate() if t.name == "kiln-emulator" and t not in besides]


def test_sync_context_serves_and_stops_cleanly(tmp_path: Path) -> None:
    shared = _emulator_threads()
    with Emulator(EmulatorConfig(data_dir=tmp_path)) as emu:
        assert emu.url.startswith("http://127.0.0.1:")
        assert emu.data_dir == tmp_path
        assert httpx.get(emu.url + "/_emulator/sandboxes").json() == {"sandboxes": []}
        assert len(_emulator_threads(besides=shared)) == 1
    assert _emulator_threads(besides=shared) == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(emu.url + "/_emulator/sandboxes")


async def test_async_context_does_not_block_the_loop(tmp_path: Path) -> None:
    shared = _emulator_threads()
    async with (
        Emulator(EmulatorConfig(data_dir=tmp_path)) as emu,
        httpx.AsyncClient(base_url=emu.url, headers=AUTH) as http,
    ):
        created = (await http.post(SANDBOXES, json=CREATE_BODY)).json()
        assert created["status"] == "running"
    assert _emulator_threads(besides=shared) == []


def test_default_data_dir_is_temporary_and_removed() -> None:
    emu = start_emulator()
    data_dir = emu.data_dir
    assert data_dir.is_dir()
    emu.stop()
    assert not data_dir.exists()


def test_stop_ends_open_follow_streams(tmp_path: Path) -> None:
    shared = _emulator_threads()
    received: list[str] = []
    with Emulator(EmulatorConfig(data_dir=tmp_path)) as emu:
        http = httpx.Client(base_url=emu.url, headers=AUTH)
        sandbox = SandboxDriver(http, http.post(SANDBOXES, json=CREATE_BODY).json()["sandbox_id"])
        with EmulatorClient(emu.url) as admin:
            admin.set_builder(duration_ms=60_000)
        stage_build(sandbox, prepare(http, "slow", "FROM a\n"), "FROM a\n", {"f": b"1"})
        pid = sandbox.start("tl-rootfs-build", *BUILDER_ARGS, root=True)["pid"]

        def follow() -> None:
            path = f"/api/v1/processes/{pid}/output/follow"
            with http.stream("GET", path, headers=sandbox.headers) as stream:
                for line in stream.iter_lines():
                    received.append(line)
                    streaming.set()

        streaming = threading.Event()
        reader = threading.Thread(target=follow)
        reader.start()
        assert streaming.wait(STOP_DEADLINE_S)
        started = time.monotonic()
    reader.join(STOP_DEADLINE_S)
    assert not reader.is_alive()
    assert time.monotonic() - started < STOP_DEADLINE_S
    assert any("stand-in" in line for line in received)
    assert _emulator_threads(besides=shared) == []


def test_non_loopback_host_needs_allow_remote() -> None:
    with pytest.raises(ValueError, match="allow_remote"):
        EmulatorConfig(host="0.0.0.0")
    assert EmulatorConfig(host="0.0.0.0", allow_remote=True).allow_remote


def test_cli_refuses_a_remote_host(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["emulator", "--host", "0.0.0.0"]) == 2
    assert "--allow-remote" in capsys.readouterr().err


async def test_asgi_transport_runs_in_process(tmp_path: Path) -> None:
    app = create_app(EmulatorConfig(data_dir=tmp_path))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://emu", headers=AUTH) as http:
        missing = await http.get("/platform/v1/sandbox-templates/by-name/x")
        assert missing.status_code == 404
        wrong = await http.patch(SANDBOXES)
        assert wrong.status_code == 405
        assert wrong.json()["code"] == "HTTP_405"


def test_cli_prints_the_url_and_exits_zero_on_ctrl_c(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "kiln", "emulator", "--data-dir", str(tmp_path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("kiln emulator listening on http://127.0.0.1:")
        url = first.split()[-1]
        assert httpx.get(url + "/_emulator/sandboxes").status_code == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(CLI_DEADLINE_S) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_unexpected_errors_answer_json_without_a_traceback() -> None:
    def explode(_request: Request) -> Response:
        raise RuntimeError("secret internals")

    app = Starlette(routes=[Route("/boom", explode)], exception_handlers=EXCEPTION_HANDLERS)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://emu") as http:
        response = await http.get("/boom")
    assert response.status_code == 500
    assert response.json()["code"] == "INTERNAL"
    assert "secret internals" not in response.text
    assert "Traceback" not in response.text


def test_cli_reports_a_busy_port(emulator: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    port = emulator.url.rsplit(":", 1)[1]
    assert main(["emulator", "--port", port]) == 2
    assert "Address already in use" in capsys.readouterr().err


def test_cli_refuses_an_impossible_port(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["emulator", "--port", "70000"]) == 2
    assert "0..65535" in capsys.readouterr().err


def test_localhost_is_served_on_ipv4(tmp_path: Path) -> None:
    with Emulator(EmulatorConfig(host="localhost", data_dir=tmp_path)) as emu:
        assert emu.url.startswith("http://127.0.0.1:")
