"""The emulator's Image Service (``/images/v4``) on the wire: admission and its Idempotency-Key,
the context upload and seal, build states, cancel, retirement, auth, and what it never logs.

The official client's own runs are in test_image_service_conformance.py; these drive the wire
directly, to reach what that client never sends (a wrong digest, an oversized body, a replayed
key with another body).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kiln.emulator import Emulator, EmulatorConfig
from kiln.testing import TEST_TOKEN
from support.polling import wait_until_blocking
from support.wire import AUTH

BUILDS = "/images/v4/builds"
DOCKERFILE = b"FROM python:3.12-slim\nARG GREETING\nRUN echo $GREETING\n"
# How long a build of the ideal profile may take to end; polled, never slept.
DEADLINE_S = 20.0
SECRET_CONFIG = '{"auths": {"registry.example.com": {"auth": "YWxpY2U6czNjcjN0LXB3"}}}'


def context_tar(files: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in (files or {"Dockerfile": DOCKERFILE}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def dockerfile_body(name: str = "app", **extra: Any) -> dict[str, Any]:
    return {
        "kind": "dockerfile",
        "name": name,
        "dockerfile_path": "Dockerfile",
        "build_args": {"GREETING": "hi"},
        "disk_mb": 10240,
        "parents": [],
        **extra,
    }


def admit(http: httpx.Client, body: dict[str, Any], key: str = "key-1") -> httpx.Response:
    return http.post(BUILDS, json=body, headers={"Idempotency-Key": key})


def admitted(http: httpx.Client, body: dict[str, Any], key: str = "key-1") -> dict[str, Any]:
    response = admit(http, body, key)
    assert response.status_code == 200, response.text
    build: dict[str, Any] = response.json()
    return build


def upload(build: dict[str, Any], data: bytes) -> httpx.Response:
    # The upload URL is pre-signed: no token, exactly as the official client sends it.
    return httpx.put(build["context_upload"]["url"], content=data)


def seal(http: httpx.Client, build_id: str, data: bytes) -> httpx.Response:
    digest = hashlib.sha256(data).hexdigest()
    return http.post(f"{BUILDS}/{build_id}/context/seal", json={"digest": digest})


def finished(http: httpx.Client, build_id: str) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        response = http.get(f"{BUILDS}/{build_id}")
        assert response.status_code == 200, response.text
        build: dict[str, Any] = response.json()
        return build if build["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_until_blocking(ended, timeout_s=DEADLINE_S)


def built(http: httpx.Client, body: dict[str, Any], key: str) -> dict[str, Any]:
    build = admitted(http, body, key)
    data = context_tar()
    assert upload(build, data).status_code == 200
    assert seal(http, build["build_id"], data).status_code == 200
    return finished(http, build["build_id"])


def introspected(http: httpx.Client) -> list[dict[str, Any]]:
    builds: list[dict[str, Any]] = http.get("/_emulator/image-builds").json()["builds"]
    return builds


# -- admission ---------------------------------------------------------------------------------


def test_the_same_idempotency_key_gets_the_same_build(http: httpx.Client) -> None:
    first = admitted(http, dockerfile_body())
    again = admitted(http, dockerfile_body())
    assert again["build_id"] == first["build_id"]
    assert again["client_request_id"] == "key-1"
    assert again["context_upload"] == first["context_upload"]
    assert len(introspected(http)) == 1


def test_a_replayed_key_with_another_body_is_refused(http: httpx.Client) -> None:
    first = admitted(http, dockerfile_body())
    response = admit(http, dockerfile_body(build_args={"GREETING": "other"}))
    assert response.status_code == 409
    assert response.json()["code"] == "client_request_id_mismatch"
    assert response.json()["build_id"] == first["build_id"]


def test_a_second_build_of_a_busy_name_is_refused_naming_the_active_one(
    http: httpx.Client,
) -> None:
    first = admitted(http, dockerfile_body())
    response = admit(http, dockerfile_body(), key="key-2")
    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "image_build_in_progress"
    assert body["active_build_id"] == first["build_id"]
    assert (body["image_name"], body["active_kind"], body["active_status"]) == (
        "app",
        "dockerfile",
        "pending",
    )


def test_an_admission_needs_an_idempotency_key(http: httpx.Client) -> None:
    response = http.post(BUILDS, json=dockerfile_body())
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["message"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"kind": "bake"}, "kind"),
        ({"dockerfile_path": "../Dockerfile"}, "dockerfile_path"),
        ({"disk_mb": 0}, "disk_mb"),
        ({"build_args": {"A": 1}}, "build_args"),
        ({"parents": [{"reference": "base", "public_id": "tmpl-1"}]}, "parents[0].public_id"),
    ],
)
def test_a_malformed_admission_names_its_field(
    http: httpx.Client, change: dict[str, Any], field: str
) -> None:
    response = admit(http, dockerfile_body(**change))
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"
    assert field in response.json()["message"]


def test_a_parent_that_is_no_image_is_refused(http: httpx.Client) -> None:
    parents = [{"reference": "base", "public_id": "image_0123"}]
    response = admit(http, dockerfile_body(parents=parents))
    assert response.status_code == 400
    assert "image_0123" in response.json()["message"]


# -- context and seal --------------------------------------------------------------------------


def test_a_sealed_build_runs_to_an_image_with_its_build_args(http: httpx.Client) -> None:
    build = built(http, dockerfile_body(), "key-1")
    assert (build["status"], build["phase"], build["attempt_no"]) == ("succeeded", "finished", 1)
    image = build["result"]
    assert image["name"] == "app"
    assert http.get("/images/v4/images/name/app").json() == image
    assert http.get(f"/images/v4/images/{image['id']}").json() == image
    # The legacy lookup sees the image too, in the format legacy clients refuse as a parent.
    template = http.get("/platform/v1/sandbox-templates/by-name/app").json()
    assert template["snapshotFormatVersion"] == "content_addressed_streaming_v1"
    sandboxes = http.get("/_emulator/sandboxes").json()["sandboxes"]
    assert [s["status"] for s in sandboxes] == ["terminated"]
    [record] = introspected(http)
    assert record["build_args"] == {"GREETING": "hi"}


def test_a_seal_with_the_wrong_digest_is_refused_and_the_right_one_accepted(
    http: httpx.Client,
) -> None:
    build = admitted(http, dockerfile_body())
    data = context_tar()
    assert upload(build, data).status_code == 200
    wrong = seal(http, build["build_id"], data + b"\0")
    assert wrong.status_code == 400
    assert wrong.json()["code"] == "digest_mismatch"
    assert http.get(f"{BUILDS}/{build['build_id']}").json()["phase"] == "awaiting_context"
    assert seal(http, build["build_id"], data).status_code == 200
    # A repeated seal (its first answer lost) is the same seal.
    assert seal(http, build["build_id"], data).status_code == 200
    assert finished(http, build["build_id"])["status"] == "succeeded"


def test_an_upload_still_arriving_at_the_seal_cannot_replace_the_sealed_context(
    http: httpx.Client,
) -> None:
    build = admitted(http, dockerfile_body())
    sealed = context_tar({"Dockerfile": DOCKERFILE, "which": b"sealed"})
    late = context_tar({"Dockerfile": DOCKERFILE, "which": b"late"})
    assert upload(build, sealed).status_code == 200

    def late_body() -> Iterator[bytes]:
        yield late[:512]
        # The seal lands while this upload is half sent.
        assert seal(http, build["build_id"], sealed).status_code == 200
        yield late[512:]

    refused = httpx.put(build["context_upload"]["url"], content=late_body())
    assert refused.status_code == 409
    assert refused.json()["code"] == "context_not_accepted"
    assert finished(http, build["build_id"])["status"] == "succeeded"
    template = http.get("/platform/v1/sandbox-templates/by-name/app").json()
    snapshot = http.get("/_emulator/blobs", params={"uri": template["snapshotUri"]}).content
    with tarfile.open(fileobj=io.BytesIO(snapshot)) as archive:
        member = archive.extractfile("context/which")
        assert member is not None
        assert member.read() == b"sealed"


def test_a_seal_before_any_upload_is_refused(http: httpx.Client) -> None:
    build = admitted(http, dockerfile_body())
    response = seal(http, build["build_id"], b"")
    assert response.status_code == 409
    assert response.json()["code"] == "context_not_uploaded"


def test_an_upload_url_with_a_forged_signature_is_refused(http: httpx.Client) -> None:
    build = admitted(http, dockerfile_body())
    url = build["context_upload"]["url"].split("?")[0] + "?sig=" + "0" * 64
    assert httpx.put(url, content=context_tar()).status_code == 403


@pytest.fixture
def small_cap_emulator() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(image_context_max_bytes=4096)) as emulator:
        yield emulator


def test_a_context_above_max_bytes_is_refused_and_not_kept(
    small_cap_emulator: Emulator,
) -> None:
    with httpx.Client(base_url=small_cap_emulator.url, headers=AUTH) as http:
        build = admitted(http, dockerfile_body())
        assert build["context_upload"]["max_bytes"] == 4096
        big = context_tar({"Dockerfile": DOCKERFILE, "blob": b"x" * 8192})
        assert upload(build, big).status_code == 413

        def chunked() -> Iterator[bytes]:
            yield big[:2048]
            yield big[2048:]

        # Without a Content-Length the cap is enforced as the body streams in.
        refused = httpx.put(build["context_upload"]["url"], content=chunked())
        assert refused.status_code == 413
        assert refused.json()["code"] == "context_too_large"
        assert seal(http, build["build_id"], big).json()["code"] == "context_not_uploaded"


def test_an_import_takes_no_context_and_runs_at_once(http: httpx.Client) -> None:
    body = {"kind": "import", "image_ref": "python:3.12-slim", "name": "py", "disk_mb": 10240}
    build = admitted(http, body)
    assert "context_upload" not in build
    assert build["phase"] in ("starting_builder", "executing", "finished")
    assert seal(http, build["build_id"], b"").json()["code"] == "context_not_accepted"
    assert finished(http, build["build_id"])["status"] == "succeeded"


def test_a_failing_builder_fails_the_build_with_its_reason(http: httpx.Client) -> None:
    http.post("/_emulator/builder", json={"exit_code": 3})
    build = built(http, dockerfile_body(), "key-1")
    assert build["status"] == "failed"
    assert "tl-image-builder exited with status 3" in build["error"]
    assert build["result"] is None


def test_a_builder_sandbox_lost_mid_build_fails_the_build(http: httpx.Client) -> None:
    http.post("/_emulator/builder", json={"duration_ms": 60_000})
    build = admitted(http, dockerfile_body())
    data = context_tar()
    upload(build, data)
    seal(http, build["build_id"], data)
    sandbox = http.get(f"{BUILDS}/{build['build_id']}").json()["builder_sandbox_id"]
    http.post(f"/_emulator/sandboxes/{sandbox}/terminate", json={"reason": "host lost"})
    ended = finished(http, build["build_id"])
    assert ended["status"] == "failed"
    assert "host lost" in ended["error"]


# -- retirement and cancel ---------------------------------------------------------------------


def test_an_unknown_build_is_not_found(http: httpx.Client) -> None:
    response = http.get(f"{BUILDS}/build_nope")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_a_later_build_of_the_image_retires_the_finished_one(http: httpx.Client) -> None:
    first = built(http, dockerfile_body(), "key-1")
    old_snapshot = http.get("/platform/v1/sandbox-templates/by-name/app").json()["snapshotUri"]
    second = built(http, dockerfile_body(), "key-2")
    # The name's previous snapshot is dropped with it.
    assert http.get("/_emulator/blobs", params={"uri": old_snapshot}).status_code == 404
    retired = http.get(f"{BUILDS}/{first['build_id']}")
    assert retired.status_code == 404
    assert "current build" in retired.json()["message"]
    # The image's id names the current image: the rebuild kept it and replaced its snapshot.
    assert second["result"]["id"] == first["result"]["id"]
    assert http.get("/images/v4/images/name/app").json() == second["result"]


def test_cancel_by_client_request_id_then_again_then_unknown(http: httpx.Client) -> None:
    build = admitted(http, dockerfile_body())
    cancel = {"client_request_id": "key-1"}
    first = http.post(f"{BUILDS}/cancel", json=cancel).json()
    assert first["outcome"] == "cancelled"
    assert first["build"]["build_id"] == build["build_id"]
    assert first["build"]["status"] == "cancelled"
    assert http.post(f"{BUILDS}/cancel", json=cancel).json()["outcome"] == "already_cancelled"
    absent = http.post(f"{BUILDS}/cancel", json={"client_request_id": "never-sent"}).json()
    assert absent == {"outcome": "not_admitted", "build": None}
    # The name is free again.
    assert admit(http, dockerfile_body(), key="key-2").status_code == 200


def test_cancel_of_a_running_build_ends_its_sandbox(http: httpx.Client) -> None:
    http.post("/_emulator/builder", json={"duration_ms": 60_000})
    build = admitted(http, dockerfile_body())
    data = context_tar()
    upload(build, data)
    seal(http, build["build_id"], data)
    outcome = http.post(f"{BUILDS}/cancel", json={"build_id": build["build_id"]}).json()
    assert outcome["outcome"] == "cancelled"
    assert finished(http, build["build_id"])["status"] == "cancelled"
    sandboxes = http.get("/_emulator/sandboxes").json()["sandboxes"]
    assert [s["termination_reason"] for s in sandboxes] == ["image build cancelled"]


def test_cancel_of_a_finished_build_reports_it(http: httpx.Client) -> None:
    build = built(http, dockerfile_body(), "key-1")
    outcome = http.post(f"{BUILDS}/cancel", json={"build_id": build["build_id"]}).json()
    assert outcome["outcome"] == "already_completed"
    assert outcome["build"]["result"] == build["result"]


def test_cancel_needs_exactly_one_selector(http: httpx.Client) -> None:
    both = {"build_id": "build_x", "client_request_id": "key-1"}
    assert http.post(f"{BUILDS}/cancel", json=both).status_code == 400
    assert http.post(f"{BUILDS}/cancel", json={}).status_code == 400


# -- auth and secrets --------------------------------------------------------------------------


@pytest.fixture
def keyed_emulator() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(api_key=TEST_TOKEN)) as emulator:
        yield emulator


def test_a_wrong_or_missing_token_is_refused_in_the_services_shape(
    keyed_emulator: Emulator,
) -> None:
    url = keyed_emulator.url
    wrong = httpx.get(f"{url}{BUILDS}/build_x", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.json()["code"] == "unauthenticated"
    assert httpx.get(f"{url}/images/v4/images/name/app").status_code == 401
    with httpx.Client(base_url=url, headers=AUTH) as http:
        build = admitted(http, dockerfile_body())
        # The pre-signed upload needs no token even on a guarded emulator.
        assert upload(build, context_tar()).status_code == 200


def test_credentials_and_tokens_never_reach_the_log_or_introspection(
    http: httpx.Client,
) -> None:
    body = {
        "kind": "import",
        "image_ref": "registry.example.com/team/base:1",
        "name": "base",
        "disk_mb": 10240,
        "registry_credentials_json": SECRET_CONFIG,
    }
    build = admitted(http, body)
    finished(http, build["build_id"])
    [record] = introspected(http)
    assert record["registry_credentials_forwarded"] is True
    for surface in ("/_emulator/requests", "/_emulator/image-builds", "/_emulator/templates"):
        text = http.get(surface).text
        assert "YWxpY2U6czNjcjN0LXB3" not in text, surface
        assert TEST_TOKEN not in text, surface


def test_image_service_requests_are_logged_and_faulted_like_the_others(
    http: httpx.Client,
) -> None:
    http.post(
        "/_emulator/faults",
        json={
            "match": {"method": "POST", "path": "^/images/v4/builds$"},
            "action": {"status": 503},
            "times": 1,
        },
    )
    assert admit(http, dockerfile_body()).status_code == 503
    build = admitted(http, dockerfile_body())
    data = context_tar()
    upload(build, data)
    calls = [(e["method"], e["path"], e["status"]) for e in http.get("/_emulator/requests").json()]
    assert calls == [
        ("POST", BUILDS, 503),
        ("POST", BUILDS, 200),
        ("PUT", f"/image-context-uploads/{build['build_id']}", 200),
    ]
    # The replay after the injected 503 made exactly one build.
    assert len(introspected(http)) == 1


def test_a_hard_link_in_the_context_keeps_its_bytes_in_the_snapshot(http: httpx.Client) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in {"Dockerfile": DOCKERFILE, "data.txt": b"shared bytes"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("again.txt")
        link.type, link.linkname = tarfile.LNKTYPE, "data.txt"
        archive.addfile(link)
    data = buffer.getvalue()
    build = admitted(http, dockerfile_body())
    assert upload(build, data).status_code == 200
    assert seal(http, build["build_id"], data).status_code == 200
    assert finished(http, build["build_id"])["status"] == "succeeded"
    template = http.get("/platform/v1/sandbox-templates/by-name/app").json()
    snapshot = http.get("/_emulator/blobs", params={"uri": template["snapshotUri"]}).content
    with tarfile.open(fileobj=io.BytesIO(snapshot)) as stored:
        again = stored.extractfile("context/again.txt")
        assert again is not None
        assert again.read() == b"shared bytes"
