"""Lifecycle API: create/get/delete, start delay, expiry and the keepalive contract."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from kiln.emulator import Emulator, EmulatorConfig
from kiln.testing import EmulatorClient
from support.wire import AUTH, CREATE_BODY, SANDBOXES, SandboxDriver

DEADLINE_S = 10.0
# Long enough that a sandbox kept alive by pings would have expired twice without them.
KEEPALIVE_SPAN_S = 2.5


def wait_for_status(http: httpx.Client, sandbox_id: str, wanted: str) -> float:
    """Poll until the sandbox reaches ``wanted``; returns how long it took."""
    started = time.monotonic()
    while time.monotonic() - started < DEADLINE_S:
        if http.get(f"{SANDBOXES}/{sandbox_id}").json()["status"] == wanted:
            return time.monotonic() - started
    raise AssertionError(f"sandbox {sandbox_id} did not become {wanted} within {DEADLINE_S}s")


def test_create_answers_every_required_field(http: httpx.Client, emulator: Emulator) -> None:
    created = http.post(SANDBOXES, json=CREATE_BODY).json()
    got = http.get(f"{SANDBOXES}/{created['sandbox_id']}").json()
    assert got["namespace"] == "default"
    assert got["resources"] == {
        "cpus": 2.0,
        "memory_mb": 4096,
        "disk_mb": 30720,
        "ephemeral_disk_mb": 30720,
    }
    assert got["sandbox_url"] == emulator.url
    assert got["timeout_secs"] == 300
    assert got["routing_hint"]
    assert "id" not in got  # the official client rejects it as a duplicate of sandbox_id


def test_plain_sandboxes_route(http: httpx.Client) -> None:
    created = http.post("/sandboxes", json=CREATE_BODY).json()
    assert http.get(f"/sandboxes/{created['sandbox_id']}").json()["status"] == "running"
    assert http.delete(f"/sandboxes/{created['sandbox_id']}").json()["status"] == "terminated"


def test_unknown_sandbox_is_404(http: httpx.Client) -> None:
    response = http.get(f"{SANDBOXES}/sbx-nope")
    assert response.status_code == 404
    assert response.json()["code"] == "SANDBOX_NOT_FOUND"
    assert http.delete(f"{SANDBOXES}/sbx-nope").status_code == 404


def test_other_namespace_does_not_see_the_sandbox(http: httpx.Client) -> None:
    created = http.post(SANDBOXES, json=CREATE_BODY).json()
    other = http.get(f"/v1/namespaces/other/sandboxes/{created['sandbox_id']}")
    assert other.status_code == 404


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({}, "'image'"),
        ({"image": "i", "resources": {"cpus": "two"}}, "resources.cpus"),
        ({"image": "i", "resources": {"disk_mb": -1}}, "resources.disk_mb"),
        ({"image": "i", "timeout_secs": 0}, "timeout_secs"),
    ],
)
def test_create_names_the_bad_field(
    http: httpx.Client, body: dict[str, object], named: str
) -> None:
    response = http.post(SANDBOXES, json=body)
    assert response.status_code == 400
    assert named in response.json()["error"]


def test_lifecycle_needs_a_token(emulator: Emulator) -> None:
    assert httpx.post(emulator.url + SANDBOXES, json=CREATE_BODY).status_code == 401


def test_sandbox_is_pending_for_the_start_delay(tmp_path: Path) -> None:
    with Emulator(EmulatorConfig(data_dir=tmp_path, start_delay_ms=300)) as emu:
        http = httpx.Client(base_url=emu.url, headers=AUTH)
        created = http.post(SANDBOXES, json=CREATE_BODY).json()
        assert created["status"] == "pending"
        early = SandboxDriver(http, created["sandbox_id"]).request("GET", "/api/v1/health")
        assert early.status_code == 400
        assert "not running" in early.json()["error"]
        wait_for_status(http, created["sandbox_id"], "running")


def test_a_pending_sandbox_terminated_by_a_fault_never_runs(tmp_path: Path) -> None:
    with (
        Emulator(EmulatorConfig(data_dir=tmp_path, start_delay_ms=60_000)) as emu,
        httpx.Client(base_url=emu.url, headers=AUTH) as http,
    ):
        sandbox_id = http.post(SANDBOXES, json=CREATE_BODY).json()["sandbox_id"]
        assert http.get(f"{SANDBOXES}/{sandbox_id}").json()["status"] == "pending"
        ended = http.post(f"/_emulator/sandboxes/{sandbox_id}/terminate", json={"reason": "boom"})
        assert ended.status_code == 200, ended.text
        described = http.get(f"{SANDBOXES}/{sandbox_id}").json()
        assert (described["status"], described["termination_reason"]) == ("terminated", "boom")
        assert http.post("/_emulator/sandboxes/sbx-nope/terminate").status_code == 404


def test_idle_sandbox_expires_and_refuses_proxy_calls(
    admin: EmulatorClient, http: httpx.Client
) -> None:
    created = http.post(SANDBOXES, json={**CREATE_BODY, "timeout_secs": 1}).json()
    waited = wait_for_status(http, created["sandbox_id"], "terminated")
    assert waited >= 0.5
    response = SandboxDriver(http, created["sandbox_id"]).request("GET", "/api/v1/health")
    assert response.status_code == 400
    listed = admin.sandboxes()
    assert [(s["status"], s["termination_reason"]) for s in listed] == [("terminated", "timeout")]


@pytest.mark.slow
def test_proxy_traffic_keeps_a_sandbox_alive(http: httpx.Client) -> None:
    created = http.post(SANDBOXES, json={**CREATE_BODY, "timeout_secs": 1}).json()
    sandbox = SandboxDriver(http, created["sandbox_id"])
    started = time.monotonic()
    while time.monotonic() - started < KEEPALIVE_SPAN_S:
        assert sandbox.request("GET", "/api/v1/health").json() == {"healthy": True}
    assert http.get(f"{SANDBOXES}/{sandbox.id}").json()["status"] == "running"
    wait_for_status(http, sandbox.id, "terminated")
