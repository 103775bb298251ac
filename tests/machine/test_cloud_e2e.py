"""Issue 10's "Done when": kiln builds against the emulator's cloud profile, end to end.

Timings are scaled down by ten (a 40 s silent builder behind a 5 s stream idle limit becomes
4 s behind 0.5 s), which keeps every harsh behaviour and the suite's time.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiln.emulator import Emulator
from kiln.plan import plan_dockerfile
from kiln.testing import TEST_TOKEN, emulator_config
from support.machine import (
    EmulatorPool,
    fake_credential_helper,
    helper_log,
    run_to_end,
)
from support.processes import kiln_env, run_kiln

# The module, not the handler of the same name that kiln.machine.handlers exports.
upload_module = importlib.import_module("kiln.machine.handlers.upload")

pytestmark = pytest.mark.e2e

SILENT_BUILDER_MS = 4000
STREAM_IDLE_MS = 500


async def test_a_silent_builder_behind_a_short_stream_idle_limit(
    emulator_pool: EmulatorPool,
) -> None:
    with emulator_pool.running("cloud", stream_idle_ms=STREAM_IDLE_MS) as admin:
        admin.set_builder(duration_ms=SILENT_BUILDER_MS)
        run = await run_to_end(admin)
        assert run.state.state == "done", run.state.error
        follows = [r for r in admin.requests() if r["path"].endswith("/output/follow")]
        assert len(follows) >= 2, "the balancer closed silent streams and kiln followed again"
        assert run.state.attempts["run_builder"] == 1


# -- a private base image behind a credential helper, through the `kiln` command -----------------

PRIVATE_HOST = "registry.example.com"
PRIVATE_USER, PRIVATE_PASSWORD = "bob", "pr1vate-Passw0rd"
PRIVATE_DOCKERFILE = f"FROM {PRIVATE_HOST}/team/base:1\nRUN echo built\n"
PROCESS_TIMEOUT_S = 120.0


@pytest.fixture
def private_cloud(tmp_path: Path) -> Iterator[str]:
    """A cloud-profile emulator (scaled timings) whose registry PRIVATE_HOST needs a login."""
    config = emulator_config(
        "cloud",
        data_dir=tmp_path / "emulator",
        private_registries={PRIVATE_HOST: (PRIVATE_USER, PRIVATE_PASSWORD)},
    )
    with Emulator(config) as server:
        yield server.url


def _kiln_build(tmp_path: Path, url: str, **env: str) -> subprocess.CompletedProcess[str]:
    context = tmp_path / "context"
    context.mkdir(exist_ok=True)
    (context / "Dockerfile").write_text(PRIVATE_DOCKERFILE)
    clean = kiln_env(tmp_path, token=TEST_TOKEN, DOCKER_CONFIG=str(tmp_path / "docker"), **env)
    args = ["build", str(context / "Dockerfile"), "--api-url", url, "--json"]
    return run_kiln(args, clean, timeout_s=PROCESS_TIMEOUT_S)


def _result(stdout: str) -> dict[str, Any]:
    last = json.loads(stdout.splitlines()[-1])
    assert last["type"] == "result", last
    return last  # type: ignore[no-any-return]


def _docker_config(tmp_path: Path, config: dict[str, Any]) -> None:
    directory = tmp_path / "docker"
    directory.mkdir(exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))


@pytest.mark.slow
def test_a_private_base_image_behind_a_creds_store_helper_builds(
    tmp_path: Path, private_cloud: str
) -> None:
    helpers = tmp_path / "bin"
    helpers.mkdir()
    answer = {"ServerURL": PRIVATE_HOST, "Username": PRIVATE_USER, "Secret": PRIVATE_PASSWORD}
    fake_credential_helper(helpers, "fake", {PRIVATE_HOST: json.dumps(answer)})
    _docker_config(tmp_path, {"auths": {PRIVATE_HOST: {}}, "credsStore": "fake"})
    path = f"{helpers}{os.pathsep}{os.environ['PATH']}"
    done = _kiln_build(tmp_path, private_cloud, PATH=path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _result(done.stdout)["state"] == "done"
    assert helper_log(helpers, "fake") == [PRIVATE_HOST]
    assert PRIVATE_PASSWORD not in done.stdout + done.stderr


@pytest.mark.slow
def test_a_private_base_image_without_credentials_fails_with_login_advice(
    tmp_path: Path, private_cloud: str
) -> None:
    _docker_config(tmp_path, {"auths": {}})
    failed = _kiln_build(tmp_path, private_cloud)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    result = _result(failed.stdout)
    assert result["state"] == "failed"
    advice = " ".join(result["advice"])
    assert PRIVATE_HOST in advice and f"docker login {PRIVATE_HOST}" in advice, result


async def test_a_context_with_links_builds(emulator_pool: EmulatorPool, tmp_path: Path) -> None:
    context = tmp_path / "context"
    (context / "app").mkdir(parents=True)
    (context / "app" / "main.py").write_text("print('hi')\n")
    (context / "current").symlink_to("app")
    (context / "main-link.py").symlink_to("app/main.py")
    (context / "Dockerfile").write_text("FROM python:3.12-slim\nCOPY . /srv\n")
    with emulator_pool.running("cloud") as admin:
        run = await run_to_end(admin, plan_dockerfile(context / "Dockerfile"))
        assert run.state.state == "done", run.state.error


async def test_a_proxy_demanding_a_length_gets_a_small_context_with_one_at_once(
    emulator_pool: EmulatorPool,
) -> None:
    with emulator_pool.running("cloud", require_content_length=True) as admin:
        run = await run_to_end(admin)
        assert run.state.state == "done", run.state.error
        puts = [r["status"] for r in admin.requests() if r["method"] == "PUT"]
        assert puts == [200, 200], "the archive, archived in memory first, and spec.json"
        assert not run.state.chunked_upload_refused


async def test_a_proxy_demanding_a_length_gets_the_context_once_with_one(
    emulator_pool: EmulatorPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A context too large to archive in memory first is streamed, refused, then spooled.
    monkeypatch.setattr(upload_module, "IN_MEMORY_CONTEXT_BYTES", 0)
    with emulator_pool.running("cloud", require_content_length=True) as admin:
        run = await run_to_end(admin)
        assert run.state.state == "done", run.state.error
        puts = [r["status"] for r in admin.requests() if r["method"] == "PUT"]
        assert sorted(puts) == [200, 200, 411], "refused once, the spooled archive, spec.json"
        assert run.state.attempts["upload"] == 1
        assert run.state.chunked_upload_refused
