"""Conformance: the official Tensorlake client (its Rust core) completes builds against the emulator.

The client is the peer that keeps the emulator honest: it is not kiln code, so a wire mistake
cannot hide by being made the same way on both sides. Every call uses the legacy protocol
(``cas=False``) in namespace ``default``. Expected behaviour comes from the wire contract
(``shared/reference/tensorlake-build-api.md``); section numbers below refer to it.

Every scenario runs against the ideal profile and against the cloud profile (timings scaled
down): the official client completing under ``cloud`` is the proof that the profile is harsh
but possible.
"""

from __future__ import annotations

import base64
import contextlib
import json
import random
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kiln.testing import TEST_PAT, TEST_TOKEN
from support.emulator import snapshot_files
from support.official import NAMESPACE, OfficialPeer, start_peer
from support.paths import HELLO, MULTISTAGE

# The builder stand-in stores the extracted context under this prefix in its snapshot archive.
CONTEXT_PREFIX = "context/"
ORG, PROJECT = "org-conformance", "proj-conformance"

PROCESSES = "/api/v1/processes"
SIGN = "POST /api/v1/blob/sign"
FOLLOW = r"^/api/v1/processes/\d+/output/follow$"
SANDBOX = r"^/v1/namespaces/default/sandboxes/[^/]+$"
# dmesg and df, each through /processes/run (docs/protocol.md#diagnostics).
DIAGNOSTIC_COMMANDS = 2
# The hello build runs eight processes (docs/protocol.md#the-official-client): /bin/true, mkdir,
# chmod, mkdir, mkdir context, tar, mkdir, and the builder last; so the builder's follow is the one
# after the first seven.
FOLLOWS_BEFORE_BUILDER = 7
# Counted from this emulator's log for examples/hello; docs/protocol.md#the-official-client
# lists the same sequence.
HELLO_REQUESTS = 34
# How often the official client lists the processes after a failed start
# (docs/protocol.md#the-official-client).
RECOVERY_LISTINGS = 10
MS_PER_S = 1000
# 1 MB at 16 Mbit/s (2 MB/s) takes 500 ms; the bound leaves room for the link's small burst.
UPLOAD_BYTES = 1_000_000
BANDWIDTH_MBPS = 16
MIN_UPLOAD_MS = 400
# The builder stand-in paces its log lines so that it is still running when its stream is cut.
SLOW_BUILDER = {"line_pace_ms": 150}
# A builder silent for several idle limits: the cloud profile closes its stream meanwhile.
SILENT_IDLE_MS = 300
SILENT_BUILDER_MS = 1200


class Peer(OfficialPeer):
    """The official client on the legacy path, plus the emulator's admin API."""

    def calls_but_status_polls(self) -> list[str]:
        """The calls, with the sandbox status polls after the first one left out: how many polls
        a pending sandbox takes depends on the clock, everything else does not."""
        calls = self.calls()
        polls = [i for i, call in enumerate(calls) if re.match(f"GET {SANDBOX[1:]}", call)]
        return [call for i, call in enumerate(calls) if i not in polls[1:]]


@pytest.fixture(params=["ideal", pytest.param("cloud", marks=pytest.mark.slow)])
def conformance_emulator(request: pytest.FixtureRequest) -> Iterator[Callable[..., Peer]]:
    """Start an emulator of the test's profile with the given config options; everything started
    is stopped after.

    Before stopping, every emulator must show what holds after any run, failed or not: no live
    sandbox and no token anywhere in the request log.
    """
    profile: str = request.param
    with contextlib.ExitStack() as stack:

        def start(**config: Any) -> Peer:
            return start_peer(stack, Peer, profile, **config)

        yield start


@pytest.fixture
def conformance_peer(conformance_emulator: Callable[..., Peer]) -> Peer:
    return conformance_emulator()


def add_reset(
    peer: Peer, method: str, path: str, *, times: int | None = None, after: int = 0
) -> None:
    """Reset the connection of matching requests (``times`` None: every one of them)."""
    peer.add_fault({"reset": True}, method=method, path=path, times=times, after=after)


# -- builds that must complete -----------------------------------------------------------------


def test_plain_dockerfile_builds_and_registers(conformance_peer: Peer) -> None:
    peer = conformance_peer
    run = peer.build(HELLO)
    result = run.ok()
    assert result["name"] == "hello"
    assert f"Legacy image 'hello' registered ({result['id']})" in run.text()
    assert peer.template("hello")["id"] == result["id"]


def test_snapshot_holds_exactly_what_dockerignore_allows(conformance_peer: Peer) -> None:
    conformance_peer.build(HELLO).ok()
    files = snapshot_files(conformance_peer, conformance_peer.template("hello"))
    context = {
        name.removeprefix(CONTEXT_PREFIX): data
        for name, data in files.items()
        if name.startswith(CONTEXT_PREFIX)
    }
    # .dockerignore drops *.log and notes/; the .dockerignore file itself is still sent
    # (docs/protocol.md#context-upload).
    allowed = [".dockerignore", "Dockerfile", "hello.py", "requirements.txt"]
    assert context == {name: (HELLO.parent / name).read_bytes() for name in allowed}


def test_hello_takes_a_fixed_number_of_requests(conformance_peer: Peer) -> None:
    conformance_peer.build(HELLO).ok()
    calls = conformance_peer.calls_but_status_polls()
    assert len(calls) == HELLO_REQUESTS, "\n".join(calls)
    assert calls[:3] == [
        "GET /platform/v1/sandbox-templates/by-name/python:3.12-slim",
        "POST /platform/v1/sandbox-template-builds",
        f"POST /v1/namespaces/{NAMESPACE}/sandboxes",
    ]
    assert calls[3].startswith(f"GET /v1/namespaces/{NAMESPACE}/sandboxes/")
    assert calls[-1].startswith(f"DELETE /v1/namespaces/{NAMESPACE}/sandboxes/")


def test_proxy_requests_name_their_sandbox(conformance_peer: Peer) -> None:
    conformance_peer.build(HELLO).ok()
    proxied = [e for e in conformance_peer.requests() if e["path"].startswith("/api/v1/")]
    assert proxied
    assert {e["sandbox"] for e in proxied} == {proxied[0]["sandbox"]}
    assert proxied[0]["sandbox"] is not None


def test_multistage_looks_up_its_side_images(conformance_peer: Peer) -> None:
    peer = conformance_peer
    run = peer.build(MULTISTAGE)
    assert run.ok()["name"] == "multistage"
    lookups = [c for c in peer.calls() if "/sandbox-templates/by-name/" in c]
    # The final FROM holds `${PY_VERSION}`: unresolvable, so it is not looked up
    # (docs/protocol.md#template-lookup); the demoted build stage image and the COPY --from image
    # are.
    assert lookups == [
        "GET /platform/v1/sandbox-templates/by-name/golang:1.22",
        "GET /platform/v1/sandbox-templates/by-name/busybox:1.36",
    ]
    assert "EXPOSE" in run.text()


def test_registry_import_uploads_no_context(conformance_peer: Peer) -> None:
    peer = conformance_peer
    run = peer.import_image("python:3.12-slim")
    assert run.ok()["name"] == "python"
    assert not [c for c in peer.calls() if "by-name" in c], "an import looks nothing up"
    assert not [e for e in peer.requests() if "context.tar.gz" in str(e["query"])]
    assert set(snapshot_files(peer, peer.template("python"))) == {"spec.json"}


@pytest.mark.parametrize(("sign_mode", "child_signs"), [("legacy", 0), ("new", 2)])
def test_child_of_a_registered_image_is_a_diff(
    conformance_emulator: Callable[..., Peer], tmp_path: Path, sign_mode: str, child_signs: int
) -> None:
    peer = conformance_emulator(sign_mode=sign_mode)
    parent = peer.build(HELLO).ok()
    before = len(peer.requests())
    child = tmp_path / "child" / "Dockerfile"
    child.parent.mkdir()
    child.write_text("FROM hello\nRUN echo child\n")
    run = peer.build(child)
    run.ok()
    assert "Build mode: RootfsDiff" in run.text()
    lookup = [e for e in peer.requests() if e["path"].endswith("/by-name/hello")]
    assert [e["status"] for e in lookup] == [200]
    template = peer.template("child")
    assert template["rootfsNodeKind"] == "diff"
    assert template["id"] != parent["id"]
    # docs/protocol.md#signing: the new path signs the snapshot upload and a download of the
    # parent's manifest.
    assert peer.calls()[before:].count(SIGN) == child_signs


def test_signed_path(conformance_emulator: Callable[..., Peer]) -> None:
    peer = conformance_emulator(sign_mode="new")
    peer.build(HELLO).ok()
    assert SIGN in peer.calls()
    assert snapshot_files(peer, peer.template("hello"))


def test_pat_mode_uses_scoped_routes(conformance_peer: Peer) -> None:
    peer = conformance_peer
    peer.build(
        HELLO, token=TEST_PAT, use_scope_headers=True, organization_id=ORG, project_id=PROJECT
    ).ok()
    platform = [c for c in peer.calls() if " /platform/" in c]
    prefix = f"/platform/v1/organizations/{ORG}/projects/{PROJECT}/"
    assert platform
    assert all(c.split(" ", 1)[1].startswith(prefix) for c in platform), platform


# -- faults: the client must behave as the contract predicts ------------------------------------


@pytest.mark.slow
def test_502_on_proxy_startup_is_retried(conformance_peer: Peer) -> None:
    peer = conformance_peer
    peer.add_fault({"status": 502}, method="POST", path=f"^{PROCESSES}$", times=1)
    peer.build(HELLO).ok()
    # The official client (docs/protocol.md#the-official-client): a failed start looks for an
    # already started /bin/true (there is none: the request never reached the sandbox), gives up
    # after ten listings a second apart, then starts it again. The readiness probe emits nothing, so
    # the log is the only witness.
    entries = peer.requests()
    starts = [e["status"] for e in entries if e["method"] == "POST" and e["path"] == PROCESSES]
    assert starts[:2] == [502, 200]
    assert [e["path"] for e in entries].count(PROCESSES) == len(starts) + RECOVERY_LISTINGS


def test_cut_builder_stream_reattaches(conformance_peer: Peer) -> None:
    peer = conformance_peer
    peer.set_builder(**SLOW_BUILDER)
    peer.add_fault(
        {"cut_stream_after": 2}, method="GET", path=FOLLOW, after=FOLLOWS_BEFORE_BUILDER, times=1
    )
    run = peer.build(HELLO)
    run.ok()
    # The official client (docs/protocol.md#the-official-client): a stream that ends while the
    # process runs is followed again from the start.
    assert "ended before process" in run.text()
    assert "reattaching" in run.text()
    # The replay is dropped by the client up to what it has seen, so each line is emitted once.
    logs = [e["message"] for e in run.events if e["type"] == "build_log"]
    assert len(logs) == len(set(logs))
    assert any("metadata written" in line for line in logs)


def test_a_silent_builder_outlives_streams_closed_for_idleness(
    conformance_emulator: Callable[..., Peer],
) -> None:
    peer = conformance_emulator(stream_idle_ms=SILENT_IDLE_MS)
    peer.set_builder(duration_ms=SILENT_BUILDER_MS)
    run = peer.build(HELLO)
    run.ok()
    follows = [e for e in peer.requests() if re.match(FOLLOW, e["path"])]
    # The idle limit (a part of its own, so the ideal profile takes it too) closed the builder's
    # stream while it worked; the client followed again until the builder ended.
    assert "ended before process" in run.text()
    assert len(follows) > FOLLOWS_BEFORE_BUILDER + 1


def test_a_private_base_image_needs_credentials_from_the_docker_config(
    conformance_emulator: Callable[..., Peer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, user, password = "registry.example.com", "alice", "conformance-registry-pw"
    peer = conformance_emulator(private_registries={registry: (user, password)})
    dockerfile = tmp_path / "app" / "Dockerfile"
    dockerfile.parent.mkdir()
    dockerfile.write_text(f"FROM {registry}/team/base:1\nRUN make\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    refused = peer.build(dockerfile)
    assert "tl-rootfs-build' failed with exit code 1" in refused.failure()
    assert "pull access denied for registry.example.com/team/base" in refused.text()
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (tmp_path / ".docker").mkdir()
    (tmp_path / ".docker" / "config.json").write_text(
        json.dumps({"auths": {registry: {"auth": auth}}})
    )
    peer.build(dockerfile).ok()
    assert auth not in peer.request_log()


def test_builder_oom_kill_fails_with_memory_advice(conformance_peer: Peer) -> None:
    peer = conformance_peer
    peer.set_builder(oom_kill=True)
    message = peer.build(HELLO).failure()
    assert "OOM killer" in message
    assert "ran out of memory" in message
    assert "builder sandbox:" in message


def test_builder_enospc_fails_with_disk_advice(conformance_peer: Peer) -> None:
    peer = conformance_peer
    peer.set_builder(enospc=True)
    message = peer.build(HELLO).failure()
    assert "ran out of disk space" in message
    assert "builder_disk_mb" in message
    assert "ran out of memory" not in message


def test_reset_on_builder_stream_reattaches(conformance_peer: Peer) -> None:
    peer = conformance_peer
    peer.set_builder(**SLOW_BUILDER)
    add_reset(peer, "GET", FOLLOW, after=FOLLOWS_BEFORE_BUILDER, times=1)
    run = peer.build(HELLO)
    run.ok()
    # The official client (docs/protocol.md#the-official-client): a follow error while the process
    # runs counts one attempt and reattaches.
    assert "Process stream interrupted; reattaching to process" in run.text()


def test_dropped_sandbox_polls_are_retried_by_the_http_layer(conformance_peer: Peer) -> None:
    peer = conformance_peer
    add_reset(peer, "GET", SANDBOX, times=2)
    peer.build(HELLO).ok()
    # Observed, not in the contract: the lifecycle client re-sends a GET whose connection dropped,
    # at once and up to three attempts in all, below the build's own retry logic
    # (docs/protocol.md#transient-errors).
    polls = [
        e["status"] for e in peer.requests() if e["method"] == "GET" and "/sandboxes/" in e["path"]
    ]
    # Under the cloud profile the retried poll meets the pending window (502, then pending)
    # before the sandbox runs.
    assert polls[:2] == [None, None]
    assert polls[-1] == 200
    assert len(polls) == 3 or peer.profile == "cloud"


def test_a_sandbox_poll_that_always_drops_fails_the_build(conformance_peer: Peer) -> None:
    peer = conformance_peer
    add_reset(peer, "GET", SANDBOX)
    message = peer.build(HELLO).failure()
    # The official client (docs/protocol.md#the-official-client): a dropped connection surfaces as a
    # middleware error, never transient, so the status wait gives up; the sandbox exists by then, so
    # the error names it and it is still deleted.
    assert "error sending request" in message
    assert "builder sandbox:" in message
    assert peer.calls()[-1].startswith(f"DELETE /v1/namespaces/{NAMESPACE}/sandboxes/")


def test_a_dropped_create_fails_before_any_sandbox_exists(conformance_peer: Peer) -> None:
    peer = conformance_peer
    add_reset(peer, "POST", r"/sandboxes$")
    message = peer.build(HELLO).failure()
    # docs/protocol.md#error-context: errors before the sandbox exists are raised unwrapped, and
    # there is nothing to delete.
    assert "error sending request" in message
    assert "builder sandbox:" not in message
    assert peer.sandboxes() == []
    assert not [c for c in peer.calls() if c.startswith("DELETE ")]


def test_a_dropped_proxy_call_fails_the_build_and_cleans_up(conformance_peer: Peer) -> None:
    peer = conformance_peer
    add_reset(peer, "GET", r"^/api/v1/files$")
    message = peer.build(HELLO).failure()
    # Unlike the lifecycle client, the proxy client does not re-send: the metadata read fails once
    # and for good, after diagnostics ran (docs/protocol.md#diagnostics) and found nothing to
    # advise.
    assert "metadata.json" in message
    assert "builder sandbox:" in message
    assert "ran out of" not in message
    assert peer.calls().count("POST /api/v1/processes/run") == DIAGNOSTIC_COMMANDS


def test_latency_applies_to_every_request_of_the_official_client(
    conformance_emulator: Callable[..., Peer],
) -> None:
    latency_ms = 20
    peer = conformance_emulator(latency_ms=latency_ms)
    started = time.monotonic()
    peer.build(HELLO).ok()
    assert time.monotonic() - started >= HELLO_REQUESTS * latency_ms / MS_PER_S
    assert min(e["duration_ms"] for e in peer.requests()) >= latency_ms


def test_bandwidth_paces_the_context_upload(
    conformance_emulator: Callable[..., Peer], tmp_path: Path
) -> None:
    peer = conformance_emulator(bandwidth_mbps=BANDWIDTH_MBPS)
    (tmp_path / "Dockerfile").write_text("FROM python:3.12-slim\nCOPY blob /blob\n")
    # Random bytes do not compress, so the archive is as large as the file.
    (tmp_path / "blob").write_bytes(random.Random(0).randbytes(UPLOAD_BYTES))
    peer.build(tmp_path / "Dockerfile").ok()
    [upload] = [
        e for e in peer.requests() if e["method"] == "PUT" and "context" in e["query"]["path"]
    ]
    assert upload["duration_ms"] >= MIN_UPLOAD_MS


def test_token_never_reaches_the_request_log(conformance_peer: Peer) -> None:
    conformance_peer.build(HELLO).ok()
    conformance_peer.import_image("python:3.12-slim").ok()
    log = conformance_peer.request_log()
    assert len(conformance_peer.requests()) > HELLO_REQUESTS
    assert TEST_TOKEN not in log
