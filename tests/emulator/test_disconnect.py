"""A client that drops its upload mid-body gets a one-line log entry, not an internal error."""

from __future__ import annotations

import socket
from typing import Any

import httpx

from kiln.emulator import Emulator, EmulatorConfig
from kiln.testing import EmulatorClient
from support.polling import wait_until_blocking
from support.wire import AUTH

RESOURCES = {"cpus": 1.0, "memory_mb": 512, "disk_mb": 1024}


def test_an_upload_dropped_mid_body_is_not_an_internal_error(capsys: Any) -> None:
    with (
        Emulator(EmulatorConfig()) as emu,
        httpx.Client(base_url=emu.url, headers=AUTH) as api,
        EmulatorClient(emu.url) as admin,
    ):
        created = api.post(
            "/v1/namespaces/default/sandboxes",
            json={"image": "x", "resources": RESOURCES, "timeout_secs": 300},
        ).json()
        sandbox = created["sandbox_id"]
        wait_until_blocking(
            lambda: (
                api.get(f"/v1/namespaces/default/sandboxes/{sandbox}").json()["status"] == "running"
            )
        )
        port = int(emu.url.rsplit(":", 1)[1])
        head = (
            f"PUT /api/v1/files?path=/tmp/x HTTP/1.1\r\nHost: {sandbox}.local\r\n"
            f"Authorization: {AUTH['Authorization']}\r\nContent-Length: 100000\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.sendall(head.encode() + b"only ten b")
        entry = wait_until_blocking(
            lambda: next((e for e in admin.requests() if e["method"] == "PUT"), None)
        )
    assert entry["status"] in (400, None)
    output = capsys.readouterr()
    assert "emulator_internal_error" not in output.out + output.err
    assert "Traceback" not in output.out + output.err
