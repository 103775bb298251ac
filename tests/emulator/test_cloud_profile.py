"""The cloud profile: every part of it, each at test speed through its own option.

Each test names the part it proves; together they are the profile's contract (README, "The
emulator"). Timings are scaled down; nothing here waits on a sleep, every wait polls a deadline.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from typing import Any, cast

import httpx
import pytest

from kiln.cli.emulator import config_from, register
from kiln.emulator import CLOUD, Emulator, EmulatorConfig, create_app
from kiln.errors import ConfigError, UsageError
from kiln.testing import CLOUD_TEST_TIMINGS, TEST_PAT, EmulatorClient, emulator_config
from kiln.testing.plugin import PROFILE_ENV, chosen_profile
from support.polling import wait_until_blocking
from support.wire import (
    AUTH,
    BUILD_DIR,
    BUILDER_ARGS,
    CREATE_BODY,
    SANDBOXES,
    SandboxDriver,
    prepare,
    stage_build,
)

DEADLINE_S = 20.0
DOCKERFILE = "FROM python:3.12-slim\nRUN echo hi\n"
# Short enough that tests are quick, long enough that a loaded machine still sees the events.
IDLE_MS = 400
MAX_MS = 800
KEEPALIVE_MS = 100
PENDING_ERRORS_MS = 1000
ORG, PROJECT = "org-1", "proj-1"
SCOPE = {"X-Forwarded-Organization-Id": ORG, "X-Forwarded-Project-Id": PROJECT}
PAT_AUTH = {"Authorization": f"Bearer {TEST_PAT}"}
TEMPLATE = "/platform/v1/sandbox-templates/by-name/nothing"
PAT_TEMPLATE = f"/platform/v1/organizations/{ORG}/projects/{PROJECT}/sandbox-templates/by-name/x"
BUILDER = {
    "command": "/usr/local/bin/tl-rootfs-build",
    "args": list(BUILDER_ARGS),
    "user": "root",
    "working_dir": BUILD_DIR,
}


@pytest.fixture(scope="module")
def cloud() -> Iterator[Emulator]:
    config = emulator_config(
        "cloud",
        # A 502 window the first poll cannot miss, however loaded the machine.
        pending_errors_ms=PENDING_ERRORS_MS,
        start_delay_ms=2 * PENDING_ERRORS_MS,
        stream_idle_ms=IDLE_MS,
        stream_max_ms=MAX_MS,
        sse_keepalive_ms=KEEPALIVE_MS,
    )
    with Emulator(config) as emu:
        yield emu


@pytest.fixture
def api(cloud: Emulator) -> Iterator[httpx.Client]:
    with EmulatorClient(cloud.url) as admin:
        admin.reset()
    with httpx.Client(base_url=cloud.url, headers=AUTH, timeout=30) as client:
        yield client


def running(api: httpx.Client) -> dict[str, Any]:
    """Create a sandbox and poll it (through its 502 window) until it runs."""
    created = api.post(SANDBOXES, json=CREATE_BODY).json()

    def ran() -> dict[str, Any] | None:
        got = api.get(f"{SANDBOXES}/{created['sandbox_id']}")
        body: dict[str, Any] = got.json()
        return body if got.status_code == 200 and body["status"] == "running" else None

    return wait_until_blocking(ran, timeout_s=DEADLINE_S)


@pytest.fixture
def proxied(api: httpx.Client) -> Iterator[SandboxDriver]:
    described = running(api)
    with httpx.Client(base_url=described["sandbox_url"], headers=AUTH, timeout=30) as proxy:
        yield SandboxDriver(proxy, described["sandbox_id"])


def test_profile_defaults_are_realistic_and_every_part_is_its_own_option() -> None:
    config = EmulatorConfig(profile="cloud", start_delay_ms=10)
    assert config.start_delay_ms == 10
    assert (CLOUD.start_delay_ms, CLOUD.stream_idle_ms, CLOUD.stream_max_ms) == (
        1500,
        60_000,
        300_000,
    )
    assert config.stream_idle_ms == CLOUD.stream_idle_ms
    assert config.separate_proxy and config.require_content_length and config.platform_auth
    assert not EmulatorConfig().separate_proxy
    # A frozen value stays hashable whatever it holds.
    assert hash(EmulatorConfig(private_registries={"reg.example": ("u", "p")}))


def test_create_is_pending_without_url_and_get_errors_then_runs(
    api: httpx.Client, cloud: Emulator
) -> None:
    created = api.post(SANDBOXES, json=CREATE_BODY).json()
    assert created["status"] == "pending"
    assert "sandbox_url" not in created
    statuses: list[tuple[int, str | None, str | None]] = []
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline and (not statuses or statuses[-1][1] != "running"):
        got = api.get(f"{SANDBOXES}/{created['sandbox_id']}")
        body = got.json()
        statuses.append((got.status_code, body.get("status"), body.get("sandbox_url")))
    # The platform's early window: 502 PROXY_ERROR (transient for every client), then pending
    # without an address, then running with the proxy's own address.
    first_status, _, _ = statuses[0]
    assert first_status == 502
    assert statuses[-1] == (200, "running", cloud.proxy_url)
    assert all(url is None for _code, status, url in statuses if status == "pending")
    assert cloud.proxy_url != cloud.url


def test_proxy_calls_to_the_api_address_are_404(api: httpx.Client) -> None:
    described = running(api)
    wrong = SandboxDriver(api, described["sandbox_id"]).request("GET", "/api/v1/health")
    assert wrong.status_code == 404
    with httpx.Client(base_url=described["sandbox_url"], headers=AUTH) as proxy:
        assert SandboxDriver(proxy, described["sandbox_id"]).request(
            "GET", "/api/v1/health"
        ).json() == {"healthy": True}
        # And the platform is not reachable through a sandbox's address.
        assert proxy.post(SANDBOXES, json=CREATE_BODY).status_code == 404


def test_in_process_app_refuses_a_separate_proxy() -> None:
    with pytest.raises(ConfigError, match="two listening ports"):
        create_app(EmulatorConfig(profile="cloud"))


def _staged(api: httpx.Client, proxied: SandboxDriver, **behaviour: int) -> None:
    with EmulatorClient(str(api.base_url)) as admin:
        admin.set_builder(**behaviour)
    stage_build(proxied, prepare(api, "img", DOCKERFILE), DOCKERFILE, {"a.txt": b"A"})


def test_a_silent_stream_is_closed_while_the_process_runs_with_keepalives_ids_and_crlf(
    api: httpx.Client, proxied: SandboxDriver
) -> None:
    _staged(api, proxied, duration_ms=20 * IDLE_MS)
    started = proxied.request("POST", "/api/v1/processes", json=BUILDER)
    assert started.status_code == 200, started.text
    pid = started.json()["pid"]
    raw = proxied.request("GET", f"/api/v1/processes/{pid}/output/follow").text
    # Closed by the idle limit, not by the process's end: it still runs.
    assert proxied.info(pid)["status"] == "running"
    assert ": keepalive\r\n\r\n" in raw
    assert "id: 1\r\ndata: {" in raw
    assert "\n\n" not in raw.replace("\r\n", "")
    # A reattach replays everything from the start (the follow contract), then is cut again.
    again = proxied.request("GET", f"/api/v1/processes/{pid}/output/follow").text
    assert again.count("data:") == raw.count("data:")


def test_a_run_stream_is_cut_by_the_idle_limit_without_an_exit_event(
    api: httpx.Client, proxied: SandboxDriver
) -> None:
    _staged(api, proxied, duration_ms=20 * IDLE_MS)
    raw = proxied.request("POST", "/api/v1/processes/run", json=BUILDER).text
    assert '"pid"' in raw
    assert "exit_code" not in raw


def test_any_stream_is_closed_at_its_maximum_age(api: httpx.Client, proxied: SandboxDriver) -> None:
    # A builder that talks more often than the idle limit, for far longer than the age limit.
    lines = 200
    _staged(api, proxied, log_lines=lines, line_pace_ms=IDLE_MS // 4)
    pid = proxied.start(BUILDER["command"], *BUILDER_ARGS, root=True, working_dir=BUILD_DIR)["pid"]
    events = proxied.follow(pid)
    assert proxied.info(pid)["status"] == "running"
    assert 0 < len(events) < lines


def test_a_put_without_content_length_is_411(proxied: SandboxDriver) -> None:
    path = "/tmp/chunked"
    chunked = proxied.request(
        "PUT", "/api/v1/files", params={"path": path}, content=iter([b"a", b"b"])
    )
    assert chunked.status_code == 411
    assert "Content-Length" in chunked.json()["error"]
    assert proxied.put(path, b"ab").status_code == 200


def test_api_keys_use_token_routes_and_pats_use_scoped_routes(api: httpx.Client) -> None:
    assert api.get(TEMPLATE).status_code == 404  # an API key on its route: allowed, not found
    refused = api.get(PAT_TEMPLATE, headers=SCOPE)
    assert refused.status_code == 403
    assert "API keys" in refused.json()["error"]
    assert api.get(PAT_TEMPLATE, headers={**PAT_AUTH, **SCOPE}).status_code == 404
    pat_on_token_route = api.get(TEMPLATE, headers={**PAT_AUTH, **SCOPE})
    assert pat_on_token_route.status_code == 403
    assert "organizations" in pat_on_token_route.json()["error"]
    # A PAT must name its scope on every route, the lifecycle's too.
    unscoped = api.post(SANDBOXES, json=CREATE_BODY, headers=PAT_AUTH)
    assert unscoped.status_code == 403
    assert api.post(SANDBOXES, json=CREATE_BODY, headers={**PAT_AUTH, **SCOPE}).is_success


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["emulator", *argv])


def test_cli_profile_and_per_part_flags() -> None:
    config = config_from(
        _parse("--profile", "cloud", "--start-delay-ms", "10", "--no-separate-proxy")
    )
    assert config.profile == "cloud"
    assert config.start_delay_ms == 10
    assert not config.separate_proxy
    assert config.stream_idle_ms == CLOUD.stream_idle_ms
    ideal = config_from(_parse("--stream-idle-ms", "500", "--require-content-length"))
    assert (ideal.stream_idle_ms, ideal.require_content_length, ideal.platform_auth) == (
        500,
        True,
        False,
    )
    registry = config_from(_parse("--private-registry", "reg.example=alice:s3cret"))
    assert registry.private_registries == {"reg.example": ("alice", "s3cret")}
    assert "s3cret" not in repr(registry)
    with pytest.raises(UsageError, match="HOST=USER:PASSWORD"):
        config_from(_parse("--private-registry", "reg.example"))


def test_test_profile_scales_every_timing_down() -> None:
    config = emulator_config("cloud")
    for name, value in CLOUD_TEST_TIMINGS.items():
        assert getattr(config, name) == value
        assert value <= getattr(CLOUD, name)
    assert emulator_config("ideal") == EmulatorConfig()


class _Options:
    """A pytest config as chosen_profile sees it, with ``--kiln-emulator-profile`` as given."""

    def __init__(self, profile: str | None) -> None:
        self.profile = profile

    def getoption(self, _name: str, default: object = None) -> object:
        return self.profile if self.profile is not None else default


def _config(profile: str | None) -> pytest.Config:
    return cast(pytest.Config, _Options(profile))


def test_the_kiln_emulator_fixture_takes_its_profile_from_option_then_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(PROFILE_ENV, raising=False)
    assert chosen_profile(_config(None)) == "ideal"
    monkeypatch.setenv(PROFILE_ENV, "cloud")
    assert chosen_profile(_config(None)) == "cloud"
    assert chosen_profile(_config("ideal")) == "ideal"
    monkeypatch.setenv(PROFILE_ENV, "clod")
    with pytest.raises(pytest.UsageError, match="clod"):
        chosen_profile(_config(None))
