"""Conformance on the CAS path: the official Tensorlake client (0.5.163, its Rust core) completes
Image Service builds against the emulator with ``cas=True``, its default.

The five scenarios issue 16 names (a Dockerfile build, one with build args, an import, a build on
a pinned parent, a background build started, followed and cancelled) run on the ideal profile and
on the cloud profile (timings scaled down, platform auth, the proxy on its own port), as the
legacy conformance suite does; docs/image-service.md has the wire they exercise.

The client polls a build every 3 s (the first poll some 45 ms after the seal) and follows the
builder's log only while a poll finds the build running, so the tests that need the log make the
builder outlast the first poll that can find it running.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tensorlake._cloud_sdk as sdk

from kiln.testing import TEST_PAT, TEST_TOKEN
from support.emulator import snapshot_files
from support.official import (
    ARGS_DOCKERFILE,
    CAS_FORMAT,
    DEADLINE_S,
    ENDLESS_BUILDER,
    FOLLOWABLE_BUILDER_MS,
    NAMESPACE,
    OfficialPeer,
    Run,
    start_peer,
)
from support.paths import HELLO
from support.polling import wait_until_blocking

ORG, PROJECT = "org-cas", "proj-cas"
BUILDS = "/images/v4/builds"
CONTEXT_PREFIX = "context/"


class Peer(OfficialPeer):
    """The official client on the CAS path, plus the emulator's admin API."""

    cas = True

    def start(self, dockerfile: Path) -> dict[str, Any]:
        started: dict[str, Any] = json.loads(
            sdk.start_image_build(self.url, TEST_TOKEN, str(dockerfile), namespace=NAMESPACE)
        )
        return started

    def wait(self, build_id: str, events: list[dict[str, Any]]) -> Run:
        return self.call(sdk.wait_image_build, build_id, DEADLINE_S, True, emit=events.append)

    def cancel(self, build_id: str) -> dict[str, Any]:
        outcome: dict[str, Any] = json.loads(
            sdk.cancel_image_build(self.url, TEST_TOKEN, build_id, namespace=NAMESPACE)
        )
        return outcome

    def slow_builder(self) -> None:
        self.set_builder(duration_ms=FOLLOWABLE_BUILDER_MS[self.profile])

    def snapshot_files(self, name: str) -> dict[str, bytes]:
        return snapshot_files(self, self.template(name))


@pytest.fixture(params=["ideal", pytest.param("cloud", marks=pytest.mark.slow)])
def cas_emulator(request: pytest.FixtureRequest) -> Iterator[Callable[..., Peer]]:
    profile: str = request.param
    with contextlib.ExitStack() as stack:

        def start(**config: Any) -> Peer:
            return start_peer(stack, Peer, profile, pat=TEST_PAT, **config)

        yield start


@pytest.fixture
def peer(cas_emulator: Callable[..., Peer]) -> Peer:
    return cas_emulator()


def dockerfile_in(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name / "Dockerfile"
    path.parent.mkdir()
    path.write_text(text)
    return path


# -- the five scenarios ------------------------------------------------------------------------


def test_a_dockerfile_build_registers_a_cas_image(peer: Peer) -> None:
    run = peer.build(HELLO)
    result = run.ok()
    assert (result["name"], result["snapshotFormatVersion"]) == ("hello", CAS_FORMAT)
    assert f"CAS image 'hello' registered ({result['id']})" in run.text()
    [build] = peer.image_builds()
    assert (build["status"], build["kind"], build["sealed"]) == ("succeeded", "dockerfile", True)
    calls = peer.calls()
    assert calls[:6] == [
        "GET /images/v4/images/name/python:3.12-slim",
        "GET /platform/v1/sandbox-templates/by-name/python:3.12-slim",
        f"POST {BUILDS}",
        f"PUT /image-context-uploads/{build['build_id']}",
        f"POST {BUILDS}/{build['build_id']}/context/seal",
        f"GET {BUILDS}/{build['build_id']}",
    ]
    # Then only polls, and the follow of the builder's log when a poll found it running.
    follow = (
        f"GET /v1/namespaces/{NAMESPACE}/sandboxes/{build['builder_sandbox_id']}",
        "GET /api/v1/",
    )
    assert all(c == calls[5] or c.startswith(follow) for c in calls[6:]), calls
    looked_up = httpx.get(
        f"{peer.url}/images/v4/images/name/hello", headers={"Authorization": f"Bearer {TEST_TOKEN}"}
    )
    assert looked_up.json()["id"] == result["id"]
    # The snapshot holds exactly what .dockerignore let the client send.
    context = {
        name.removeprefix(CONTEXT_PREFIX): data
        for name, data in peer.snapshot_files("hello").items()
        if name.startswith(CONTEXT_PREFIX)
    }
    allowed = [".dockerignore", "Dockerfile", "hello.py", "requirements.txt"]
    assert context == {name: (HELLO.parent / name).read_bytes() for name in allowed}


def test_build_args_are_applied_by_the_builder(peer: Peer, tmp_path: Path) -> None:
    dockerfile = dockerfile_in(tmp_path, "greet", ARGS_DOCKERFILE)
    peer.slow_builder()
    run = peer.build(dockerfile, build_args={"GREETING": "hello", "UNUSED": "x"})
    run.ok()
    logs = run.logs()
    assert "Step 2/5 : FROM python:3.12-slim" in logs
    assert 'Step 5/5 : RUN echo "hello world"' in logs
    assert "[Warning] One or more build-args ['UNUSED'] were not consumed" in logs
    assert len(logs) == len(set(logs)), "a replayed log line was emitted twice"
    spec = json.loads(peer.snapshot_files("greet")["spec.json"])
    assert spec["build_args"] == {"GREETING": "hello", "UNUSED": "x"}


def test_an_import_registers_a_cas_image_without_a_context(peer: Peer) -> None:
    run = peer.import_image("python:3.12-slim")
    assert run.ok()["name"] == "python"
    calls = peer.calls()
    assert calls[0] == f"POST {BUILDS}"
    assert not [c for c in calls if "by-name" in c or "context" in c], calls
    [build] = peer.image_builds()
    assert (build["kind"], build["image_ref"]) == ("import", "python:3.12-slim")
    assert set(peer.snapshot_files("python")) == {"spec.json"}


def test_a_build_on_a_pinned_parent_is_a_diff(peer: Peer, tmp_path: Path) -> None:
    parent = peer.build(HELLO).ok()
    pinned = dockerfile_in(tmp_path, "pinned", f"FROM {parent['id']}\nRUN echo child\n")
    before = len(peer.requests())
    peer.build(pinned).ok()
    # The client's result has no node kind (it says "base" for every CAS image); the image has.
    assert peer.template("pinned")["rootfsNodeKind"] == "diff"
    # A pin is resolved by nobody: the client sends the image id it names, unlooked-up.
    assert not [c for c in peer.calls()[before:] if "by-name" in c or "/images/name/" in c]
    peer.build(dockerfile_in(tmp_path, "named", "FROM hello\nRUN echo child\n")).ok()
    assert peer.template("named")["rootfsNodeKind"] == "diff"
    parents = {b["name"]: b["parents"] for b in peer.image_builds()}
    assert parents["pinned"] == [{"reference": parent["id"], "public_id": parent["id"]}]
    assert parents["named"] == [{"reference": "hello", "public_id": parent["id"]}]


def test_a_background_build_is_started_followed_and_cancelled(peer: Peer) -> None:
    peer.set_builder(**ENDLESS_BUILDER)
    started = peer.start(HELLO)
    build_id = started["build"]["build_id"]
    assert started["client_request_id"] == peer.image_builds()[0]["client_request_id"]
    events: list[dict[str, Any]] = []
    waited: list[Run] = []
    waiter = threading.Thread(target=lambda: waited.append(peer.wait(build_id, events)))
    waiter.start()
    try:
        wait_until_blocking(lambda: any(e["type"] == "build_log" for e in events))
        outcome = peer.cancel(build_id)
    finally:
        waiter.join(DEADLINE_S)
    assert outcome["outcome"] == "cancelled"
    assert outcome["build"]["status"] == "cancelled"
    [run] = waited
    assert '"code":"cancelled"' in run.failure()
    logs = [e["message"] for e in events if e["type"] == "build_log"]
    assert any("tl-image-builder (kiln emulator stand-in)" in line for line in logs)
    [sandbox] = peer.sandboxes()
    assert sandbox["termination_reason"] == "image build cancelled"
    assert json.loads(sdk.get_image_build(peer.url, TEST_TOKEN, build_id))["status"] == "cancelled"


# -- around them -------------------------------------------------------------------------------


def test_a_pat_uses_the_same_routes_with_scope_headers(peer: Peer) -> None:
    run = peer.call(
        sdk.build_sandbox_image,
        str(HELLO),
        token=TEST_PAT,
        cas=True,
        use_scope_headers=True,
        organization_id=ORG,
        project_id=PROJECT,
    )
    run.ok()
    lookups = [c for c in peer.calls() if "by-name" in c]
    assert lookups == [
        f"GET /platform/v1/organizations/{ORG}/projects/{PROJECT}/sandbox-templates/by-name/"
        "python:3.12-slim"
    ]
    assert f"POST {BUILDS}" in peer.calls()


def test_a_lost_admission_answer_is_retried_onto_the_same_build(peer: Peer) -> None:
    peer.add_fault({"status": 503}, method="POST", path=f"^{BUILDS}$", times=1)
    peer.build(HELLO).ok()
    admissions = [e["status"] for e in peer.requests() if e["path"] == BUILDS]
    assert admissions == [503, 200]
    assert len(peer.image_builds()) == 1


def test_a_failing_builder_fails_the_build_with_its_reason(peer: Peer) -> None:
    peer.set_builder(exit_code=3)
    message = peer.build(HELLO).failure()
    assert '"code":"failed"' in message
    assert "tl-image-builder exited with status 3" in message


def test_a_retired_build_is_not_found(peer: Peer) -> None:
    peer.build(HELLO).ok()
    [first] = peer.image_builds()
    peer.build(HELLO).ok()
    run = peer.wait(first["build_id"], [])
    assert '"code":"not_found"' in run.failure()
    assert "current build" in run.failure()


def test_the_legacy_path_refuses_a_cas_parent_and_the_cas_path_a_legacy_one(
    peer: Peer, tmp_path: Path
) -> None:
    peer.build(HELLO).ok()
    child = dockerfile_in(tmp_path, "child", "FROM hello\nRUN echo child\n")
    legacy = peer.call(sdk.build_sandbox_image, str(child), cas=False)
    assert "hello" in legacy.failure()
    assert not [c for c in peer.calls() if "sandbox-template-builds" in c]
    peer.call(sdk.import_sandbox_image, "ubuntu:24.04", registered_name="base", cas=False).ok()
    on_legacy = dockerfile_in(tmp_path, "onlegacy", "FROM base\nRUN echo child\n")
    assert "is a legacy image" in peer.build(on_legacy).failure()
