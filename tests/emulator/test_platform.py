"""Platform API: auth modes, template lookup, prepare and complete, persistence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from kiln.emulator import Emulator, EmulatorConfig
from kiln.errors import ConfigError
from kiln.testing import EmulatorClient
from support.wire import (
    AUTH,
    BY_NAME,
    SANDBOXES,
    TEMPLATE_BUILDS,
    SandboxDriver,
    build_template,
    prepare,
)

PAT = "/platform/v1/organizations/org-1/projects/proj-1"
SCOPE = {"X-Forwarded-Organization-Id": "org-1", "X-Forwarded-Project-Id": "proj-1"}


def test_missing_token_is_401(emulator: Emulator) -> None:
    response = httpx.get(emulator.url + BY_NAME + "x")
    assert response.status_code == 401
    assert "Authorization: Bearer" in response.json()["error"]


def test_api_key_mode_refuses_other_tokens(tmp_path: Path) -> None:
    with Emulator(EmulatorConfig(data_dir=tmp_path, api_key="right-key")) as emu:
        wrong = httpx.get(emu.url + BY_NAME + "x", headers={"Authorization": "Bearer wrong-key"})
        right = httpx.get(emu.url + BY_NAME + "x", headers={"Authorization": "Bearer right-key"})
    assert wrong.status_code == 401
    assert "wrong-key" not in wrong.text
    assert right.status_code == 404


@pytest.mark.parametrize("missing", sorted(SCOPE))
def test_pat_routes_need_both_scope_headers(http: httpx.Client, missing: str) -> None:
    headers = {k: v for k, v in SCOPE.items() if k != missing}
    response = http.get(f"{PAT}/sandbox-templates/by-name/x", headers=headers)
    assert response.status_code == 400
    assert missing.lower() in response.json()["error"]


def test_pat_scope_must_match_the_path(http: httpx.Client) -> None:
    headers = {**SCOPE, "X-Forwarded-Project-Id": "other"}
    response = http.get(f"{PAT}/sandbox-templates/by-name/x", headers=headers)
    assert response.status_code == 403
    assert "does not match" in response.json()["error"]


def test_pat_prepare_with_scope_headers(http: httpx.Client) -> None:
    body = {"name": "n", "dockerfile": "FROM a\n", "baseImage": "a"}
    response = http.post(f"{PAT}/sandbox-template-builds", json=body, headers=SCOPE)
    assert response.status_code == 200
    assert response.json()["rootfsNodeKind"] == "base"


def test_introspect_answers_camel_case_scope(http: httpx.Client) -> None:
    response = http.post("/platform/v1/keys/introspect", headers={"Content-Length": "0"})
    assert set(response.json()) == {"organizationId", "projectId"}


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"dockerfile": "FROM a", "baseImage": "a"}, "'name'"),
        ({"name": "n", "baseImage": "a"}, "'dockerfile'"),
        ({"name": "n", "dockerfile": "FROM a"}, "'baseImage'"),
        ({"name": 3, "dockerfile": "FROM a", "baseImage": "a"}, "'name'"),
        (
            {"name": "n", "dockerfile": "x", "baseImage": "a", "rootfsNodeKind": "odd"},
            "rootfsNodeKind",
        ),
        (
            {"name": "n", "dockerfile": "x", "baseImage": "a", "rootfsNodeKind": "diff"},
            "parentTemplate",
        ),
    ],
)
def test_prepare_names_the_bad_field(http: httpx.Client, body: dict[str, Any], named: str) -> None:
    response = http.post(TEMPLATE_BUILDS, json=body)
    assert response.status_code == 400
    assert named in response.json()["error"]


def test_prepare_rejects_non_json(http: httpx.Client) -> None:
    response = http.post(TEMPLATE_BUILDS, content=b"{not json")
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]


def test_legacy_prepare_shape(http: httpx.Client, emulator: Emulator) -> None:
    prepared = prepare(http, "n", "FROM a\n")
    build_id = prepared["buildId"]
    assert prepared["snapshotUri"] == f"s3://kiln-emulator/snapshots/{build_id}.tlsnap"
    assert prepared["upload"]["url"].startswith(
        f"{emulator.url}/_emulator/blobs/snapshots/{build_id}.tlsnap?sig="
    )
    assert prepared["upload"]["kind"] == "single_put"
    assert "snapshotRelPath" not in prepared
    assert set(prepared["builder"]) == {"image", "command", "cpus", "memoryMb", "diskMb"}


def test_new_sign_mode_prepare_and_sign(tmp_path: Path) -> None:
    with Emulator(EmulatorConfig(data_dir=tmp_path, sign_mode="new")) as emu:
        http = httpx.Client(base_url=emu.url, headers=AUTH)
        prepared = prepare(http, "n", "FROM a\n")
        assert "upload" not in prepared and "snapshotUri" not in prepared
        sandbox_id = http.post(SANDBOXES, json={"image": "i"}).json()["sandbox_id"]
        sign = {
            "target": {"kind": "artifact", "rel_path": prepared["snapshotRelPath"]},
            "op": {
                "kind": "put_artifact",
                "multipart_hint": {"max_parts": 3, "part_size_bytes": 4},
            },
        }
        signed = (
            SandboxDriver(http, sandbox_id).request("POST", "/api/v1/blob/sign", json=sign).json()
        )
        assert signed["uri"] == f"s3://kiln-emulator/{prepared['snapshotRelPath']}"
        assert len(signed["partUrls"]) == 3
        for number, chunk in enumerate([b"abcd", b"ef"], start=1):
            assert httpx.put(signed["partUrls"][number - 1], content=chunk).status_code == 200
        assert http.get("/_emulator/blobs", params={"uri": signed["uri"]}).content == b"abcdef"


def test_complete_unknown_and_twice(http: httpx.Client) -> None:
    unknown = http.post(f"{TEMPLATE_BUILDS}/build-nope/complete", json={})
    assert unknown.status_code == 404
    template = build_template(http, "once", "FROM a\n")
    again = http.post(f"{TEMPLATE_BUILDS}/{template['buildId']}/complete", json={})
    assert again.status_code == 409


def test_complete_refuses_a_snapshot_never_uploaded(http: httpx.Client) -> None:
    prepared = prepare(http, "n", "FROM a\n")
    body = {
        "snapshotId": prepared["snapshotId"],
        "snapshotUri": prepared["snapshotUri"],
        "snapshotFormatVersion": "durable_archive_v1",
        "snapshotSizeBytes": 1,
        "rootfsDiskBytes": 1,
        "rootfsNodeKind": "base",
    }
    response = http.post(f"{TEMPLATE_BUILDS}/{prepared['buildId']}/complete", json=body)
    assert response.status_code == 400
    assert "never uploaded" in response.json()["error"]


def test_lookup_accepts_encoded_and_plain_names(admin: EmulatorClient, http: httpx.Client) -> None:
    template = build_template(http, "tensorlake/python:3.12-slim", "FROM a\n")
    assert http.get(BY_NAME + "tensorlake%2Fpython%3A3.12-slim").json() == template
    assert http.get(BY_NAME + "tensorlake/python:3.12-slim").json() == template
    assert admin.templates() == [template]


def test_child_of_a_registered_template_prepares_a_diff(http: httpx.Client) -> None:
    parent = build_template(http, "base-image", "FROM python:3.12-slim\n")
    payload = {
        "templateId": parent["id"],
        "name": parent["name"],
        "reference": "base-image",
        "snapshotId": parent["snapshotId"],
        "public": False,
    }
    child = prepare(
        http, "child", "FROM base-image\n", rootfsNodeKind="diff", parentTemplate=payload
    )
    assert child["rootfsNodeKind"] == "diff"
    assert child["parent"] == {
        "parentManifestUri": parent["snapshotUri"],
        "rootfsDiskBytes": parent["rootfsDiskBytes"],
    }


def test_diff_build_records_its_parent(http: httpx.Client) -> None:
    parent = build_template(http, "base-image", "FROM python:3.12-slim\n")
    payload = {"templateId": parent["id"], "name": "base-image", "snapshotId": parent["snapshotId"]}
    child = build_template(
        http, "child", "FROM base-image\n", rootfsNodeKind="diff", parentTemplate=payload
    )
    assert child["rootfsNodeKind"] == "diff"
    assert child["parentManifestUri"] == parent["snapshotUri"]


def test_unknown_parent_template_is_refused(http: httpx.Client) -> None:
    payload = {"templateId": "tmpl-nope", "name": "x", "snapshotId": "s"}
    response = http.post(
        TEMPLATE_BUILDS,
        json={"name": "c", "dockerfile": "FROM x\n", "baseImage": "x", "parentTemplate": payload},
    )
    assert response.status_code == 400
    assert "tmpl-nope" in response.json()["error"]


def test_templates_and_blobs_survive_a_restart(tmp_path: Path) -> None:
    config = EmulatorConfig(data_dir=tmp_path / "kept")
    with Emulator(config) as first:
        template = build_template(
            httpx.Client(base_url=first.url, headers=AUTH), "kept", "FROM a\n"
        )
    with Emulator(config) as second, EmulatorClient(second.url) as admin:
        http = httpx.Client(base_url=second.url, headers=AUTH)
        assert http.get(BY_NAME + "kept").json() == template
        assert len(admin.blob(template["snapshotUri"])) == template["snapshotSizeBytes"]
        assert admin.sandboxes() == []


def test_reset_forgets_templates(admin: EmulatorClient, http: httpx.Client) -> None:
    build_template(http, "gone", "FROM a\n")
    admin.reset()
    assert admin.requests() == []
    assert http.get(BY_NAME + "gone").status_code == 404
    assert admin.sandboxes() == []


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"snapshotUri": "s3://kiln-emulator/elsewhere.tlsnap"}, "was told to upload"),
        ({"rootfsNodeKind": "diff"}, "does not match the prepared"),
        ({"snapshotId": "snapshot-other"}, "is not the one prepared"),
        ({"snapshotSizeBytes": -1}, "snapshotSizeBytes"),
    ],
)
def test_complete_checks_the_body_against_the_build(
    http: httpx.Client, change: dict[str, Any], complaint: str
) -> None:
    prepared = prepare(http, "n", "FROM a\n")
    http.put(prepared["upload"]["url"], content=b"snapshot")
    body = {
        "snapshotId": prepared["snapshotId"],
        "snapshotUri": prepared["snapshotUri"],
        "snapshotFormatVersion": "durable_archive_v1",
        "snapshotSizeBytes": 8,
        "rootfsDiskBytes": 1,
        "rootfsNodeKind": "base",
        **change,
    }
    response = http.post(f"{TEMPLATE_BUILDS}/{prepared['buildId']}/complete", json=body)
    assert response.status_code == 400
    assert complaint in response.json()["error"]


def test_blob_keys_cannot_clash(http: httpx.Client) -> None:
    assert http.put("/_emulator/blobs/a", content=b"1").status_code == 200
    clash = http.put("/_emulator/blobs/a/b", content=b"2")
    assert clash.status_code == 409
    assert clash.json()["code"] == "BLOB_KEY_CONFLICT"
    assert http.get("/_emulator/blobs", params={"uri": "gs://x/y"}).status_code == 400


def test_a_corrupt_template_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "templates.json").write_text("{broken")
    with pytest.raises(ConfigError, match="not valid JSON") as refused:
        Emulator(EmulatorConfig(data_dir=tmp_path)).start()
    assert refused.value.hint is not None


def test_diff_complete_must_name_the_prepared_parent(http: httpx.Client) -> None:
    parent = build_template(http, "base-image", "FROM a\n")
    payload = {"templateId": parent["id"], "name": "base-image", "snapshotId": parent["snapshotId"]}
    child = prepare(
        http, "child", "FROM base-image\n", rootfsNodeKind="diff", parentTemplate=payload
    )
    http.put(child["upload"]["url"], content=b"snapshot")
    body = {
        "snapshotId": child["snapshotId"],
        "snapshotUri": child["snapshotUri"],
        "snapshotFormatVersion": "durable_archive_v1",
        "snapshotSizeBytes": 8,
        "rootfsDiskBytes": 1,
        "rootfsNodeKind": "diff",
        "parentManifestUri": "s3://kiln-emulator/other.tlsnap",
    }
    response = http.post(f"{TEMPLATE_BUILDS}/{child['buildId']}/complete", json=body)
    assert response.status_code == 400
    assert "not the prepared parent" in response.json()["error"]
