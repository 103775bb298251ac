"""The CAS path from the library and the CLI: ``cas=True`` / ``--cas`` build on the Image Service
(states/cas.toml), build args are sent natively, and without ``cas`` they are refused as the
official client refuses them (docs/image-service.md)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

import kiln
from kiln import Worker, WorkerConfig
from kiln.errors import UsageError
from kiln.machine import CAS_MACHINE, load_machine_spec
from kiln.store import Store
from kiln.testing import TEST_TOKEN, EmulatorClient
from support.events import check_event
from support.paths import HELLO, REPO
from support.polling import wait_until
from support.processes import PROCESS_TIMEOUT_S, kiln_argv, kiln_env, run_kiln

FINALS = load_machine_spec(name=CAS_MACHINE).finals
WORKER = WorkerConfig(concurrency=1, lease_s=5.0, renew_every_s=1.0, poll_s=0.05)
# kiln's exit status for a cancelled build (Ctrl-C's).
EXIT_CANCELLED = 130


@pytest.fixture
def emulator(pooled_emulator: EmulatorClient) -> EmulatorClient:
    return pooled_emulator


async def test_cas_true_builds_on_the_image_service_with_native_build_args(
    emulator: EmulatorClient,
) -> None:
    events: list[kiln.Event] = []
    template = await kiln.build_image(
        HELLO,
        cas=True,
        build_args={"GREETING": "hi"},
        api_url=emulator.url,
        api_key=TEST_TOKEN,
        on_event=events.append,
    )
    assert template.id.startswith("image_")
    assert template.name == "hello"
    [build] = emulator.image_builds()
    assert build["build_args"] == {"GREETING": "hi"}
    assert build["status"] == "succeeded"
    assert emulator.sandboxes() != []  # the service's builder sandbox, ended
    assert emulator.live_sandboxes() == []
    assert kiln.StatusEvent("Loading Dockerfile...") == events[0]


async def test_cas_true_imports(emulator: EmulatorClient) -> None:
    template = await kiln.import_image(
        "python:3.12-slim", cas=True, api_url=emulator.url, api_key=TEST_TOKEN
    )
    assert template.id.startswith("image_")
    [build] = emulator.image_builds()
    assert (build["kind"], build["image_ref"]) == ("import", "python:3.12-slim")


async def test_build_args_without_cas_are_refused_before_anything_is_sent(
    emulator: EmulatorClient,
) -> None:
    with pytest.raises(UsageError) as refused:
        await kiln.build_image(
            HELLO, build_args={"A": "1"}, api_url=emulator.url, api_key=TEST_TOKEN
        )
    assert "cas=True" in (refused.value.hint or "")
    assert emulator.requests() == []


def test_kiln_build_cas_sends_build_args_natively(tmp_path: Path) -> None:
    args = ["build", "--cas", "--build-arg", "A=1", "--build-arg", "GREETING", "--json"]
    run = run_kiln([*args, str(HELLO.parent)], kiln_env(tmp_path, GREETING="from-env"))
    assert run.returncode == 0, run.stderr
    lines = [check_event(json.loads(line)) for line in run.stdout.splitlines()]
    [result] = [line for line in lines if line["type"] == "result"]
    assert result["state"] == "done"
    assert result["template"]["id"].startswith("image_")
    transitions = [line["dest"] for line in lines if line["type"] == "transition"]
    assert "create_build" in transitions and "prepare" not in transitions


async def test_a_worker_runs_a_submitted_cas_build(store: Store, emulator: EmulatorClient) -> None:
    build_id = await kiln.submit(
        HELLO, store=store, api_url=emulator.url, cas=True, build_args={"A": "1"}
    )
    worker = Worker(store, WORKER, api_key=TEST_TOKEN)
    running = asyncio.create_task(worker.run())

    async def ended() -> bool:
        record = await store.get(build_id)
        return record is not None and record.state in FINALS

    try:
        await wait_until(ended, timeout_s=60)
    finally:
        worker.drain()
        await running
    record = await store.get(build_id)
    assert record is not None and record.state == "done"
    [remote] = emulator.image_builds()
    assert (remote["status"], remote["build_args"]) == ("succeeded", {"A": "1"})


def test_kiln_cancel_reaches_the_image_service(emulator: EmulatorClient, tmp_path: Path) -> None:
    emulator.set_builder(duration_ms=60_000)
    env = kiln_env(tmp_path, token=TEST_TOKEN)
    argv = kiln_argv("build", "--cas", "--json", "--api-url", emulator.url, str(HELLO.parent))
    with subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, text=True) as build:
        assert build.stdout is not None
        for line in build.stdout:
            event = check_event(json.loads(line))
            if event["type"] == "transition" and event["dest"] == "wait_build":
                break
        cancel = run_kiln(["cancel", event["id"]], env)
        assert cancel.returncode == 0, cancel.stderr
        assert "stops it and cancels its build on the Image Service" in cancel.stdout
        rest = [check_event(json.loads(line)) for line in build.stdout]
        build.wait(timeout=PROCESS_TIMEOUT_S)
    assert build.returncode == EXIT_CANCELLED
    assert rest[-1]["type"] == "result"
    assert rest[-1]["state"] == "cancelled"
    assert "its build on the Image Service was cancelled" in rest[-1]["hint"]
    [remote] = emulator.image_builds()
    assert remote["status"] == "cancelled"
    assert emulator.live_sandboxes() == []


def test_kiln_build_cas_detach_returns_once_the_service_has_it(
    emulator: EmulatorClient, tmp_path: Path
) -> None:
    emulator.set_builder(duration_ms=3000)
    env = kiln_env(tmp_path, token=TEST_TOKEN)
    detached = run_kiln(
        ["build", "--cas", "--detach", "--api-url", emulator.url, str(HELLO.parent)], env
    )
    assert detached.returncode == 0, detached.stderr
    build_id = detached.stdout.strip()
    assert "Detached" in detached.stderr
    [remote] = emulator.image_builds()
    assert remote["sealed"] and remote["status"] not in ("succeeded", "failed", "cancelled")
    listing = json.loads(run_kiln(["ls", "--json"], env).stdout)
    assert [(r["id"], r["state"] in FINALS) for r in listing] == [(build_id, False)]
    resumed = run_kiln(["resume", build_id, "--json"], env)
    assert resumed.returncode == 0, resumed.stderr
    result = check_event(json.loads(resumed.stdout.splitlines()[-1]))
    assert (result["type"], result["state"]) == ("result", "done")
    assert [b["build_id"] for b in emulator.image_builds()] == [remote["build_id"]]
    # kiln status and kiln logs show a CAS build as any other: its phases and its outcome. (Not
    # the builder's own lines: the resume follows them only while the remote build still runs,
    # and a loaded machine can start the resume after the 3 s builder ended; following a live
    # build's log is tested in tests/machine/test_cas_machine.py.)
    status = run_kiln(["status", build_id], env)
    assert status.returncode == 0, status.stderr
    assert "wait_build" in status.stdout
    logs = run_kiln(["logs", build_id], env)
    assert "wait_build -> done" in logs.stdout
    assert f"CAS image 'hello' registered ({result['template']['id']})" in logs.stdout


def test_detach_needs_cas_and_a_service_that_stays(tmp_path: Path) -> None:
    env = kiln_env(tmp_path)
    without_cas = run_kiln(["build", "--detach", str(HELLO.parent)], env)
    assert without_cas.returncode == 2
    assert "--detach needs --cas" in without_cas.stderr
    embedded = run_kiln(["build", "--cas", "--detach", str(HELLO.parent)], env)
    assert embedded.returncode == 2
    assert "embedded emulator" in embedded.stderr


async def test_an_unchanged_cas_build_is_served_from_the_cache(
    store: Store, emulator: EmulatorClient
) -> None:
    options = {"cas": True, "store": store, "api_url": emulator.url, "api_key": TEST_TOKEN}
    first = await kiln.build_image(HELLO, **options)  # type: ignore[arg-type]
    events: list[kiln.Event] = []
    second = await kiln.build_image(HELLO, on_event=events.append, **options)  # type: ignore[arg-type]
    assert second.id == first.id
    [cached] = [e for e in events if isinstance(e, kiln.CachedEvent)]
    assert cached.template_id == first.id
    assert len(admissions(emulator)) == 1, "nothing admitted for the cached build"
    # The check asked the Image Service, with no more than the lookup of its own image.
    assert emulator.requests()[-1]["path"] == "/images/v4/images/name/hello"
    # A legacy build of the same Dockerfile is not answered by the CAS image (it registers a
    # legacy template under the name, so the CAS image that name resolved to is gone).
    legacy = await kiln.build_image(HELLO, store=store, api_url=emulator.url, api_key=TEST_TOKEN)
    assert legacy.id != first.id
    # Nor the reverse: the next CAS build builds (one more admission); its image is then a hit.
    rebuilt = await kiln.build_image(HELLO, **options)  # type: ignore[arg-type]
    assert rebuilt.id not in (legacy.id, first.id)
    assert len(admissions(emulator)) == 2
    third = await kiln.build_image(HELLO, **options)  # type: ignore[arg-type]
    assert third.id == rebuilt.id
    assert len(admissions(emulator)) == 2


def admissions(emulator: EmulatorClient) -> list[dict[str, object]]:
    return [
        e for e in emulator.requests() if (e["method"], e["path"]) == ("POST", "/images/v4/builds")
    ]
