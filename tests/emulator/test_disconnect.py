"""A client that drops its upload mid-body gets a one-line log entry, not an internal error."""

from __future__ import annotations

import socket
import time
from typing import Any

import httpx

from kiln.emulator import Emulator, EmulatorConfig

AUTH = {"Authorization": "Bearer t"}
DEADLINE_S = 10.0
RESOURCES = {"cpus": 1.0, "memory_mb": 512, "disk_mb": 1024}


def _poll(check: Any) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while not (value := check()):
        assert time.monotonic() < deadline, "condition not reached before the deadline"
    return value


def test_an_upload_dropped_mid_body_is_not_an_internal_error(capsys: Any) -> None:
    with Emulator(EmulatorConfig()) as emu, httpx.Client(base_url=emu.url, headers=AUTH) as api:
        created = api.post(
            "/v1/namespaces/default/sandboxes",
            json={"image": "x", "resources": RESOURCES, "timeout_secs": 300},
        ).json()
        sandbox = created["sandbox_id"]
        _poll(
            lambda: (
                api.get(f"/v1/namespaces/default/sandboxes/{sandbox}").json()["status"] == "running"
            )
        )
        port = int(emu.url.rsplit(":", 1)[1])
        head = (
            f"PUT /api/v1/files?path=/tmp/x HTTP/1.1\r\nHost: {sandbox}.local\r\n"
            f"Authorization: Bearer t\r\nContent-Length: 100000\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.sendall(head.encode() + b"only ten b")
        entry = _poll(
            lambda: next(
                (e for e in api.get("/_emulator/requests").json() if e["method"] == "PUT"), None
            )
        )
    assert entry["status"] in (400, None)
    output = capsys.readouterr()
    assert "emulator_internal_error" not in output.out + output.err
    assert "Traceback" not in output.out + output.err
