"""The CAS machine (states/cas.toml) driven against the emulator's Image Service: builds, an
import, parents, the legacy parent refused, a failing builder, cancel, and a resume from the
admission that lands on the build already admitted (docs/image-service.md)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import attrs
import pytest

from kiln.emulator import Emulator, EmulatorConfig
from kiln.machine import CAS_MACHINE, BuildOptions, BuildState, CasProgress, load_machine_spec
from kiln.plan import BuildPlan, plan_dockerfile, plan_import
from kiln.testing import EmulatorClient
from support.machine import FAST_BACKOFF, Run, run_to_end, start_run
from support.paths import HELLO
from support.polling import wait_until

CAS_FORMAT = "content_addressed_streaming_v1"
BUILDS = "/images/v4/builds"
HAPPY_PATH = [
    "resolve_names",
    "create_build",
    "upload_context",
    "seal_context",
    "wait_build",
    "done",
]


def cas_state(admin: EmulatorClient, plan: BuildPlan, **options: Any) -> BuildState:
    return BuildState(
        plan=plan,
        options=BuildOptions(api_url=admin.url, cas=True, **options),
        machine=CAS_MACHINE,
        cas=CasProgress(),
    )


def cas_spec() -> Any:
    return load_machine_spec(name=CAS_MACHINE).with_backoff(FAST_BACKOFF)


async def run_cas(admin: EmulatorClient, plan: BuildPlan, **options: Any) -> Run:
    return await run_to_end(admin, state=cas_state(admin, plan, **options), spec=cas_spec())


def dockerfile_in(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name / "Dockerfile"
    path.parent.mkdir()
    path.write_text(text)
    return path


@pytest.mark.cloud
async def test_a_dockerfile_build_makes_one_cas_image_with_its_build_args(
    emulator: EmulatorClient,
) -> None:
    run = await run_cas(emulator, plan_dockerfile(HELLO), build_args={"A": "1"})
    assert run.state.outcome == "done", run.state.error
    assert run.states_entered() == HAPPY_PATH
    assert run.state.result is not None
    assert run.state.result["snapshotFormatVersion"] == CAS_FORMAT
    [build] = emulator.image_builds()
    assert build["client_request_id"] == run.state.cas.request_id  # type: ignore[union-attr]
    assert build["build_id"] == run.state.build_id
    assert build["build_args"] == {"A": "1"}
    assert run.state.result["id"] == build["result"]["id"]
    # The official client's requests, no more: lookups, admission, upload, seal, polls.
    calls = [f"{e['method']} {e['path']}" for e in emulator.requests()]
    assert calls[:5] == [
        "GET /images/v4/images/name/python:3.12-slim",
        "GET /platform/v1/sandbox-templates/by-name/python:3.12-slim",
        f"POST {BUILDS}",
        f"PUT /image-context-uploads/{build['build_id']}",
        f"POST {BUILDS}/{build['build_id']}/context/seal",
    ]
    assert set(calls[5:]) == {f"GET {BUILDS}/{build['build_id']}"}


@pytest.mark.cloud
async def test_an_import_sends_no_context(emulator: EmulatorClient) -> None:
    run = await run_cas(emulator, plan_import("python:3.12-slim"))
    assert run.state.outcome == "done", run.state.error
    calls = [f"{e['method']} {e['path']}" for e in emulator.requests()]
    assert calls[0] == f"POST {BUILDS}"
    assert not [c for c in calls if "context" in c or "by-name" in c or "/name/" in c]


async def test_parents_by_name_and_by_image_id(emulator: EmulatorClient, tmp_path: Path) -> None:
    parent = await run_cas(emulator, plan_dockerfile(HELLO))
    image_id = parent.state.result["id"]  # type: ignore[index]
    named = await run_cas(emulator, plan_dockerfile(dockerfile_in(tmp_path, "a", "FROM hello\n")))
    pinned = await run_cas(
        emulator, plan_dockerfile(dockerfile_in(tmp_path, "b", f"FROM {image_id}\n"))
    )
    assert named.state.cas.parents == [{"reference": "hello", "public_id": image_id}]  # type: ignore[union-attr]
    assert pinned.state.cas.parents == [{"reference": image_id, "public_id": image_id}]  # type: ignore[union-attr]
    assert pinned.state.outcome == "done"
    kinds = {t["name"]: t["rootfsNodeKind"] for t in emulator.templates()}
    assert (kinds["a"], kinds["b"]) == ("diff", "diff")


async def test_a_legacy_parent_is_refused_before_any_admission(
    emulator: EmulatorClient, tmp_path: Path
) -> None:
    legacy = await run_to_end(emulator, plan_import("ubuntu:24.04", name="base"))
    assert legacy.state.outcome == "done"
    run = await run_cas(emulator, plan_dockerfile(dockerfile_in(tmp_path, "c", "FROM base\n")))
    assert run.state.outcome == "failed"
    assert run.state.error is not None
    assert "legacy image" in run.state.error.message
    assert "--cas" in (run.state.error.hint or "")
    assert emulator.image_builds() == []


async def test_a_failed_build_fails_without_a_cancel(emulator: EmulatorClient) -> None:
    emulator.set_builder(exit_code=3)
    run = await run_cas(emulator, plan_dockerfile(HELLO))
    assert run.state.outcome == "failed"
    assert "tl-image-builder exited with status 3" in run.state.error.message  # type: ignore[union-attr]
    assert run.states_entered()[-2:] == ["release", "failed"]
    assert not [e for e in emulator.requests() if e["path"] == f"{BUILDS}/cancel"]


async def test_cancel_while_waiting_cancels_the_remote_build(emulator: EmulatorClient) -> None:
    emulator.set_builder(duration_ms=60_000)
    run = start_run(emulator, state=cas_state(emulator, plan_dockerfile(HELLO)), spec=cas_spec())
    await wait_until(lambda: run.state.state == "wait_build" and run.state.cas.status == "running")  # type: ignore[union-attr]
    run.driver.cancel()
    await run.finish()
    assert run.state.outcome == "cancelled"
    [build] = emulator.image_builds()
    assert build["status"] == "cancelled"


async def test_a_resume_at_the_admission_lands_on_the_admitted_build(
    emulator: EmulatorClient,
) -> None:
    snapshots: list[str] = []

    async def persist(state: BuildState) -> None:
        snapshots.append(state.to_json())

    first = await run_to_end(
        emulator,
        state=cas_state(emulator, plan_dockerfile(HELLO)),
        spec=cas_spec(),
        persist=persist,
    )
    assert first.state.outcome == "done"
    # The state as persisted on entering create_build: a process killed while its request was
    # on the wire, or before the answer was recorded, resumes from exactly this.
    entering = next(s for s in map(BuildState.from_json, snapshots) if s.state == "create_build")
    resumed = await run_to_end(emulator, state=entering, spec=cas_spec())
    assert resumed.state.outcome == "done", resumed.state.error
    assert resumed.state.build_id == first.state.build_id
    assert len(emulator.image_builds()) == 1
    assert resumed.state.result == first.state.result
    admissions = [e for e in emulator.requests() if e["path"] == BUILDS]
    assert len(admissions) == 2


def test_the_cas_machine_is_declared_with_a_handler_per_state() -> None:
    from kiln.machine import MACHINES

    spec = load_machine_spec(name=CAS_MACHINE)
    assert set(MACHINES[CAS_MACHINE].by_state) == set(spec.states)
    assert attrs.has(CasProgress)


@pytest.mark.cloud
async def test_the_builders_log_is_followed_each_line_once(emulator: EmulatorClient) -> None:
    # Slow enough that a poll finds the builder running (the cloud profile's first poll finds
    # its sandbox booting, the next comes 3 s later).
    emulator.set_builder(line_pace_ms=100, log_lines=40)
    run = await run_cas(emulator, plan_dockerfile(HELLO), build_args={"A": "1"})
    assert run.state.outcome == "done", run.state.error
    logs = run.messages("build_log")
    assert any(line.startswith("tl-image-builder (kiln emulator stand-in)") for line in logs)
    assert "progress 40/40" in logs
    assert len(logs) == len(set(logs)), "a replayed line was delivered twice"
    assert run.messages("warning") == []


async def test_registry_credentials_reach_the_builder_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host, user, password = "registry.example.com", "alice", "cas-registry-pw-5c1f"
    dockerfile = dockerfile_in(tmp_path, "private", f"FROM {host}/team/base:1\nRUN make\n")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    (tmp_path / "docker").mkdir()
    config = EmulatorConfig(
        data_dir=tmp_path / "emulator", private_registries={host: (user, password)}
    )
    with Emulator(config) as server, EmulatorClient(server.url) as emulator:
        refused = await run_cas(emulator, plan_dockerfile(dockerfile))
        assert refused.state.outcome == "failed"
        assert "pull access denied" in refused.state.error.message  # type: ignore[union-attr]
        auth = base64.b64encode(f"{user}:{password}".encode()).decode()
        (tmp_path / "docker" / "config.json").write_text(
            json.dumps({"auths": {host: {"auth": auth}}})
        )
        built = await run_cas(emulator, plan_dockerfile(dockerfile))
        assert built.state.outcome == "done", built.state.error
        assert emulator.image_builds()[-1]["registry_credentials_forwarded"] is True
        seen = [
            json.dumps(emulator.requests()),
            json.dumps(emulator.image_builds()),
            json.dumps(emulator.templates()),
            built.state.to_json(),
        ]
        assert not [text for text in seen if auth in text or password in text]


async def test_a_content_digest_pin_is_refused_before_any_request(
    emulator: EmulatorClient, tmp_path: Path
) -> None:
    # The Image Service takes parents as {reference, public_id: image_<id>} and has no lookup
    # by digest, so a `cas-v1:` pin (the reference's older wire) is refused as the official
    # client refuses it, naming the pin that works (docs/image-service.md, "Pins").
    pin = "cas-v1:" + "ab" * 32
    dockerfile = dockerfile_in(tmp_path, "d", f"FROM {pin}\nRUN echo child\n")
    run = await run_cas(emulator, plan_dockerfile(dockerfile))
    assert run.state.outcome == "failed"
    assert run.state.error is not None
    assert f"FROM {pin} pins a content digest" in run.state.error.message
    assert "FROM image_<id>" in (run.state.error.hint or "")
    assert emulator.requests() == []
    assert emulator.image_builds() == []
