"""Signing requests, splices, spec.json (docs/protocol.md#signing, docs/protocol.md#spec-json)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiln.errors import ResponseError
from kiln.machine.protocol import (
    MULTIPART_MAX_PARTS,
    MULTIPART_PART_SIZE,
    REMOTE_CONTEXT_DIR,
    build_spec,
    get_blob_request,
    put_artifact_request,
    sign_targets,
    spec_json_bytes,
    splice_downloads,
    splice_signed_upload,
)

MIB = 1024 * 1024
GIB = 1024 * MIB


def prepared(kind: str) -> dict[str, Any]:
    """The reference's `prepared(kind)` fixture, as the raw prepare response."""
    return {
        "buildId": "build-1",
        "snapshotId": "snapshot-prepared",
        "snapshotUri": "s3://bucket/prepared.tlsnap",
        "rootfsNodeKind": kind,
        "builder": {
            "image": "tensorlake/rootfs-builder",
            "command": "tl-rootfs-build",
            "cpus": 2.0,
            "memoryMb": 4096,
            "diskMb": 30720,
        },
        "parent": {"parentManifestUri": "s3://bucket/parent.tlsnap", "rootfsDiskBytes": 20 * GIB},
    }


def with_images(*images: dict[str, Any]) -> dict[str, Any]:
    return {**prepared("base"), "additionalLocalImages": list(images)}


# --- sign targets ---------------------------------------------------------------------------


def test_gs_and_s3_images_are_both_sign_targets() -> None:
    # gs:// and s3:// local images are signed (docs/protocol.md#signing)
    raw = with_images({"snapshotUri": "gs://b/a.tlsnap"}, {"snapshotUri": "s3://b/b.tlsnap"})
    assert sign_targets(raw) == [(0, "gs://b/a.tlsnap"), (1, "s3://b/b.tlsnap")]


def test_local_signed_and_uriless_images_are_skipped() -> None:
    # file://, already downloadable and uri-less images are not signed (docs/protocol.md#signing)
    raw = with_images(
        {"snapshotUri": "file:///var/lib/images/a.tlsnap"},
        {"snapshotUri": "s3://b/b.tlsnap", "download": {"kind": "single_get"}},
        {"templateId": "tmpl-3"},
        {"snapshotUri": "s3://b/d.tlsnap"},
    )
    assert sign_targets(raw) == [(3, "s3://b/d.tlsnap")]


@pytest.mark.parametrize("images", [None, []])
def test_no_additional_images_means_no_targets(images: list[Any] | None) -> None:
    # no local images, nothing to sign (docs/protocol.md#signing)
    raw = prepared("base")
    if images is not None:
        raw["additionalLocalImages"] = images
    assert sign_targets(raw) == []


def test_non_string_uri_and_non_object_entries_are_not_targets() -> None:
    raw = with_images({"snapshotUri": 42}, "s3://b/x.tlsnap")  # type: ignore[arg-type]
    assert sign_targets(raw) == []


# --- sign requests ----------------------------------------------------------------------------


def test_put_artifact_request_matches_the_wire_contract() -> None:
    # supporting test S3: 10 GiB in 64 MiB parts is 160 parts
    assert put_artifact_request("snapshots/abc.tlsnap", 10 * GIB) == {
        "target": {"kind": "artifact", "rel_path": "snapshots/abc.tlsnap"},
        "op": {
            "kind": "put_artifact",
            "multipart_hint": {"max_parts": 160, "part_size_bytes": 67108864},
        },
    }


@pytest.mark.parametrize(
    ("rootfs_bytes", "parts"),
    [(0, 1), (1, 1), (64 * MIB, 1), (64 * MIB + 1, 2), (10**9 * MIB, MULTIPART_MAX_PARTS)],
)
def test_max_parts_is_clamped(rootfs_bytes: int, parts: int) -> None:
    hint = put_artifact_request("r", rootfs_bytes)["op"]["multipart_hint"]
    assert hint["max_parts"] == parts


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_max_parts_is_enough_for_the_rootfs_up_to_the_cap(rootfs_bytes: int) -> None:
    parts = put_artifact_request("r", rootfs_bytes)["op"]["multipart_hint"]["max_parts"]
    assert 1 <= parts <= MULTIPART_MAX_PARTS
    if parts < MULTIPART_MAX_PARTS:
        assert parts * MULTIPART_PART_SIZE >= rootfs_bytes
        assert (parts - 1) * MULTIPART_PART_SIZE < max(rootfs_bytes, 1)


def test_get_blob_request_matches_the_wire_contract() -> None:
    assert get_blob_request("gs://bucket/x.manifest") == {
        "target": {"kind": "blob", "uri": "gs://bucket/x.manifest"},
        "op": {"kind": "get_blob"},
    }


# --- splices ----------------------------------------------------------------------------------


SIGNED_UPLOAD = {
    "kind": "s3_multipart",
    "uri": "s3://dataplane/final.tlsnap",
    "uploadId": "upload-1",
    "partSizeBytes": 67108864,
    "partUrls": [],
}


def test_splice_replaces_the_stale_uri_and_keeps_the_whole_response() -> None:
    # the signed upload spliced into the spec (docs/protocol.md#signing)
    raw = {**prepared("base"), "snapshotUri": "s3://platform/stale.tlsnap"}
    before = copy.deepcopy(raw)
    spliced, uri = splice_signed_upload(raw, SIGNED_UPLOAD)
    assert uri == "s3://dataplane/final.tlsnap"
    assert spliced["snapshotUri"] == "s3://dataplane/final.tlsnap"
    assert spliced["upload"] == SIGNED_UPLOAD
    assert spliced["upload"]["uploadId"] == "upload-1"
    assert raw == before, "the caller's (persisted) spec must not be mutated"


def test_splice_adds_a_uri_when_prepare_gave_none() -> None:
    raw = prepared("base")
    del raw["snapshotUri"]
    spliced, _ = splice_signed_upload(raw, SIGNED_UPLOAD)
    assert spliced["snapshotUri"] == "s3://dataplane/final.tlsnap"


@pytest.mark.parametrize("uri", [None, 7])
def test_splice_without_a_string_uri_is_a_response_error(uri: object) -> None:
    # a signed upload without a uri (docs/protocol.md#signing)
    signed = {key: value for key, value in SIGNED_UPLOAD.items() if key != "uri"}
    if uri is not None:
        signed["uri"] = uri
    with pytest.raises(ResponseError, match="dataplane signed upload response is missing uri"):
        splice_signed_upload(prepared("base"), signed)


def test_splice_downloads_sets_parent_and_image_downloads() -> None:
    raw = {**prepared("diff"), "additionalLocalImages": [{"snapshotUri": "file:///a"}, {}]}
    before = copy.deepcopy(raw)
    parent_get = {"kind": "single_get", "url": "https://p"}
    image_get = {"kind": "single_get", "url": "https://i"}
    spliced = splice_downloads(raw, parent=parent_get, images={1: image_get})
    assert spliced["parent"]["download"] == parent_get
    assert spliced["parent"]["parentManifestUri"] == "s3://bucket/parent.tlsnap"
    assert spliced["additionalLocalImages"] == [
        {"snapshotUri": "file:///a"},
        {"download": image_get},
    ]
    assert raw == before


def test_splice_downloads_with_nothing_signed_is_a_copy() -> None:
    raw = prepared("base")
    assert splice_downloads(raw, parent=None, images={}) == raw


@pytest.mark.parametrize(
    ("raw", "parent", "images"),
    [
        ({"buildId": "b"}, {"kind": "single_get"}, {}),
        ({"additionalLocalImages": [{}]}, None, {1: {"kind": "single_get"}}),
    ],
)
def test_splice_downloads_into_a_missing_place_is_a_response_error(
    raw: dict[str, Any], parent: dict[str, Any] | None, images: dict[int, Any]
) -> None:
    with pytest.raises(ResponseError):
        splice_downloads(raw, parent=parent, images=images)


# --- spec.json --------------------------------------------------------------------------------


def legacy_prepared() -> dict[str, Any]:
    raw = prepared("base")
    del raw["parent"]
    raw["upload"] = {
        "kind": "single_put",
        "method": "PUT",
        "url": "https://example/upload",
        "headers": {},
        "expiresAt": "2026-05-12T00:00:00Z",
    }
    raw["runtimeContract"] = {
        "guestRuntimeLayout": "embedded",
        "guestRuntimeDriveFormat": "none",
        "guestBootContract": "supervisor-init-wrapper-v1",
    }
    return raw


def test_spec_adds_builder_inputs_and_keeps_opaque_blocks() -> None:
    # the keys set on top of the prepared spec (docs/protocol.md#spec-json)
    raw = legacy_prepared()
    spec = build_spec(
        raw,
        dockerfile="FROM alpine\nRUN echo hi\n",
        base_image="alpine",
        import_reference=None,
        rootfs_disk_bytes=2048 * MIB,
        docker_config_json="{}",
        docker_compat=True,
    )
    assert spec["dockerfile"] == "FROM alpine\nRUN echo hi\n"
    assert spec["contextDir"] == "/var/lib/tensorlake/rootfs-builder/build/context"
    assert spec["baseImage"] == "alpine"
    assert spec["rootfsDiskBytes"] == 2048 * MIB
    assert spec["dockerConfigJson"] == "{}"
    assert spec["dockerCompat"] is True
    assert spec["upload"] == raw["upload"]
    assert spec["runtimeContract"] == raw["runtimeContract"]
    assert "importImageReference" not in spec


def test_diff_spec_without_options_has_no_compat_or_credentials() -> None:
    # a diff's spec takes the parent's size, 20 GiB here, chosen by kiln.plan.sizing
    # (docs/protocol.md#spec-json)
    spec = build_spec(
        prepared("diff"),
        dockerfile="FROM parent\nRUN echo hi\n",
        base_image="parent",
        import_reference=None,
        rootfs_disk_bytes=20 * GIB,
        docker_config_json=None,
        docker_compat=False,
    )
    assert spec["rootfsDiskBytes"] == 20 * GIB
    assert "dockerCompat" not in spec
    assert "dockerConfigJson" not in spec
    assert spec["parent"] == prepared("diff")["parent"]


def test_import_spec_names_the_reference_and_still_has_a_context_dir() -> None:
    # an import's spec (docs/protocol.md#spec-json)
    spec = build_spec(
        prepared("base"),
        dockerfile="FROM ubuntu:24.04\n",
        base_image="ubuntu:24.04",
        import_reference="ubuntu:24.04",
        rootfs_disk_bytes=10 * GIB,
        docker_config_json=None,
        docker_compat=False,
    )
    assert spec["importImageReference"] == "ubuntu:24.04"
    assert spec["baseImage"] == "ubuntu:24.04"
    assert spec["dockerfile"] == "FROM ubuntu:24.04\n"
    assert spec["contextDir"] == REMOTE_CONTEXT_DIR
    assert "dockerCompat" not in spec


def test_spec_does_not_mutate_the_prepared_raw() -> None:
    raw = legacy_prepared()
    before = copy.deepcopy(raw)
    spec = build_spec(
        raw,
        dockerfile="FROM a\n",
        base_image="a",
        import_reference=None,
        rootfs_disk_bytes=1,
        docker_config_json=None,
        docker_compat=False,
    )
    spec["upload"]["url"] = "changed"
    assert raw == before


def test_non_object_prepared_spec_is_a_response_error() -> None:
    with pytest.raises(ResponseError, match="not a JSON object"):
        build_spec(
            ["not", "an", "object"],  # type: ignore[arg-type]
            dockerfile="FROM a\n",
            base_image="a",
            import_reference=None,
            rootfs_disk_bytes=1,
            docker_config_json=None,
            docker_compat=False,
        )


def test_spec_json_is_pretty_utf8_that_parses_back() -> None:
    spec = {"dockerfile": "FROM alpine\nRUN echo héllo\n", "rootfsDiskBytes": 5}
    data = spec_json_bytes(spec)
    assert data.startswith(b'{\n  "dockerfile"')
    assert "héllo".encode() in data
    assert json.loads(data) == spec
