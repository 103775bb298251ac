"""metadata.json → the complete body (docs/protocol.md#metadata-and-complete)."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiln.errors import ResponseError
from kiln.machine.protocol import PreparedView, complete_body, parse_metadata

GIB = 1024**3
TEN_GIB = 10 * GIB


def prepared(kind: str, **changes: Any) -> PreparedView:
    """The reference's `prepared(kind)` fixture, as the view `complete` needs."""
    view = PreparedView(
        snapshot_id="snapshot-prepared",
        snapshot_uri="s3://bucket/prepared.tlsnap",
        rootfs_node_kind=kind,
        parent_manifest_uri="s3://bucket/parent.tlsnap",
        rootfs_disk_bytes=TEN_GIB,
    )
    return attrs.evolve(view, **changes)


def durable(**extra: Any) -> dict[str, Any]:
    return {
        "snapshot_format_version": "durable_archive_v1",
        "snapshot_size_bytes": 1234,
        "rootfs_disk_bytes": TEN_GIB,
        **extra,
    }


# --- durable ----------------------------------------------------------------------------------


def test_snake_case_diff_metadata_maps_to_the_platform_shape() -> None:
    # snake_case metadata to the camelCase complete body (docs/protocol.md#metadata-and-complete)
    metadata = durable(
        snapshot_id="snapshot-1",
        snapshot_uri="s3://bucket/child.tlsnap",
        rootfs_node_kind="diff",
        parent_manifest_uri="s3://bucket/parent.tlsnap",
    )
    assert complete_body(metadata, prepared=prepared("diff"), signed_uri=None) == {
        "snapshotId": "snapshot-1",
        "snapshotUri": "s3://bucket/child.tlsnap",
        "snapshotFormatVersion": "durable_archive_v1",
        "snapshotSizeBytes": 1234,
        "rootfsDiskBytes": TEN_GIB,
        "rootfsNodeKind": "diff",
        "parentManifestUri": "s3://bucket/parent.tlsnap",
    }


def test_camel_case_metadata_is_read_too() -> None:
    metadata = {
        "snapshotId": "snapshot-c",
        "snapshotUri": "s3://bucket/c.tlsnap",
        "snapshotFormatVersion": "durable_archive_v1",
        "snapshotSizeBytes": 99,
        "rootfsDiskBytes": 100,
        "rootfsNodeKind": "base",
    }
    body = complete_body(metadata, prepared=prepared("base"), signed_uri=None)
    assert body == {
        "snapshotId": "snapshot-c",
        "snapshotUri": "s3://bucket/c.tlsnap",
        "snapshotFormatVersion": "durable_archive_v1",
        "snapshotSizeBytes": 99,
        "rootfsDiskBytes": 100,
        "rootfsNodeKind": "base",
    }


def test_a_present_snake_key_hides_the_camel_key_even_when_null() -> None:
    metadata = durable(snapshot_id=None, snapshotId="from-camel")
    body = complete_body(metadata, prepared=prepared("base"), signed_uri=None)
    assert body["snapshotId"] == "snapshot-prepared"


def test_signed_uri_equal_to_the_metadata_uri_is_used() -> None:
    # a signed uri equal to the metadata's (docs/protocol.md#metadata-and-complete)
    view = prepared("base", parent_manifest_uri=None, snapshot_uri=None)
    metadata = durable(snapshot_uri="s3://bucket/from-signed.tlsnap")
    body = complete_body(metadata, prepared=view, signed_uri="s3://bucket/from-signed.tlsnap")
    assert body["snapshotUri"] == "s3://bucket/from-signed.tlsnap"


def test_signed_uri_wins_over_a_stale_prepared_uri() -> None:
    # the signed uri wins when the metadata has none (docs/protocol.md#metadata-and-complete)
    view = prepared("base", parent_manifest_uri=None, snapshot_uri="s3://bucket/stale.tlsnap")
    body = complete_body(durable(), prepared=view, signed_uri="s3://bucket/from-signed.tlsnap")
    assert body["snapshotUri"] == "s3://bucket/from-signed.tlsnap"


def test_signed_uri_differing_from_the_metadata_uri_is_an_error() -> None:
    # a signed uri that differs from the metadata's (docs/protocol.md#metadata-and-complete)
    view = prepared("base", parent_manifest_uri=None, snapshot_uri=None)
    metadata = durable(snapshot_uri="s3://bucket/from-metadata.tlsnap")
    with pytest.raises(ResponseError, match="did not match dataplane signed uri"):
        complete_body(metadata, prepared=view, signed_uri="s3://bucket/from-signed.tlsnap")


def test_no_uri_anywhere_is_an_error() -> None:
    # no snapshot uri anywhere (docs/protocol.md#metadata-and-complete)
    view = prepared("base", parent_manifest_uri=None, snapshot_uri=None)
    with pytest.raises(ResponseError, match="rootfs build completed without snapshot_uri"):
        complete_body(durable(), prepared=view, signed_uri=None)


def test_diff_without_lineage_falls_back_to_prepare_and_reads_numeric_strings() -> None:
    # fallbacks to the prepared values (docs/protocol.md#metadata-and-complete)
    metadata = durable(snapshot_size_bytes="1234")
    body = complete_body(metadata, prepared=prepared("diff"), signed_uri=None)
    assert body["snapshotId"] == "snapshot-prepared"
    assert body["snapshotUri"] == "s3://bucket/prepared.tlsnap"
    assert body["snapshotSizeBytes"] == 1234
    assert body["rootfsNodeKind"] == "diff"
    assert body["parentManifestUri"] == "s3://bucket/parent.tlsnap"


def test_base_build_ignores_the_prepared_parent() -> None:
    body = complete_body(durable(), prepared=prepared("base"), signed_uri=None)
    assert "parentManifestUri" not in body
    assert "rootfsFormat" not in body


def test_diff_with_no_parent_anywhere_is_an_error() -> None:
    with pytest.raises(ResponseError, match="diff build completed without parent_manifest_uri"):
        complete_body(
            durable(), prepared=prepared("diff", parent_manifest_uri=None), signed_uri=None
        )


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("snapshot_format_version", "rootfs builder metadata is missing snapshot_format_version"),
        ("snapshot_size_bytes", "rootfs builder metadata is missing numeric snapshot_size_bytes"),
        ("rootfs_disk_bytes", "rootfs builder metadata is missing numeric rootfs_disk_bytes"),
    ],
)
def test_missing_durable_field_is_named(key: str, message: str) -> None:
    metadata = durable()
    del metadata[key]
    with pytest.raises(ResponseError) as caught:
        complete_body(metadata, prepared=prepared("base"), signed_uri=None)
    assert str(caught.value) == message


@pytest.mark.parametrize("bad", [-1, 1.5, True, "12a", "-3", "", " 12", 2**64, None, [1]])
def test_sizes_must_be_unsigned_integers_or_their_decimal_strings(bad: object) -> None:
    with pytest.raises(ResponseError, match="missing numeric snapshot_size_bytes"):
        complete_body(durable(snapshot_size_bytes=bad), prepared=prepared("base"), signed_uri=None)


@given(st.integers(min_value=0, max_value=2**64 - 1), st.booleans())
def test_any_u64_size_is_accepted_as_number_or_string(size: int, as_string: bool) -> None:
    metadata = durable(snapshot_size_bytes=str(size) if as_string else size)
    body = complete_body(metadata, prepared=prepared("base"), signed_uri=None)
    assert body["snapshotSizeBytes"] == size


# --- cas-streaming ----------------------------------------------------------------------------


def test_cas_streaming_base_uses_the_image_size_and_the_clients_disk_size() -> None:
    # cas-streaming metadata for a base (docs/protocol.md#metadata-and-complete)
    metadata = {
        "rootfs_format": "cas-streaming",
        "snapshotId": "snapshot-1",
        "imageSizeBytes": 600000000,
        "stagedArtifact": {"ignored": True},
    }
    body = complete_body(metadata, prepared=prepared("base"), signed_uri=None)
    assert body == {
        "snapshotId": "snapshot-1",
        "snapshotUri": "s3://bucket/prepared.tlsnap",
        "snapshotFormatVersion": "content_addressed_streaming_v1",
        "snapshotSizeBytes": 600000000,
        "rootfsDiskBytes": TEN_GIB,
        "rootfsNodeKind": "base",
        "rootfsFormat": "cas-streaming",
    }


def test_cas_diff_takes_kind_and_parent_from_the_metadata() -> None:
    # a cas diff takes its lineage from the metadata (docs/protocol.md#metadata-and-complete)
    metadata = {
        "rootfs_format": "cas-streaming",
        "image_size_bytes": 5,
        "rootfs_node_kind": "diff",
        "parent_manifest_uri": "s3://bucket/parents/metadata.manifest",
    }
    view = prepared("base", parent_manifest_uri=None)
    body = complete_body(metadata, prepared=view, signed_uri=None)
    assert body["rootfsNodeKind"] == "diff"
    assert body["parentManifestUri"] == "s3://bucket/parents/metadata.manifest"


def test_cas_diff_without_lineage_falls_back_to_the_prepared_diff() -> None:
    # a cas diff falls back to the prepared parent (docs/protocol.md#metadata-and-complete)
    view = prepared("diff", parent_manifest_uri="s3://bucket/parents/prepared.manifest")
    metadata = {"rootfsFormat": "cas-streaming", "imageSizeBytes": "5"}
    body = complete_body(metadata, prepared=view, signed_uri=None)
    assert body["rootfsNodeKind"] == "diff"
    assert body["parentManifestUri"] == "s3://bucket/parents/prepared.manifest"
    assert body["rootfsFormat"] == "cas-streaming"


def test_cas_diff_with_no_parent_anywhere_is_an_error() -> None:
    # a cas diff with no parent anywhere (docs/protocol.md#metadata-and-complete)
    view = prepared("diff", parent_manifest_uri=None)
    metadata = {"rootfs_format": "cas-streaming", "image_size_bytes": 5}
    with pytest.raises(ResponseError, match="without parent_manifest_uri"):
        complete_body(metadata, prepared=view, signed_uri=None)


def test_cas_streaming_requires_the_image_size() -> None:
    with pytest.raises(ResponseError, match="missing numeric image_size_bytes"):
        complete_body(
            {"rootfs_format": "cas-streaming"}, prepared=prepared("base"), signed_uri=None
        )


# --- metadata.json ----------------------------------------------------------------------------


def test_parse_metadata_reads_a_json_object() -> None:
    assert parse_metadata(b'{"snapshot_id": "s"}') == {"snapshot_id": "s"}


@pytest.mark.parametrize("data", [b"", b"{", b"[1]", b"\xff\xfe"])
def test_parse_metadata_rejects_what_is_not_a_json_object(data: bytes) -> None:
    with pytest.raises(ResponseError, match="rootfs builder metadata is not"):
        parse_metadata(data)


def test_a_reported_empty_string_is_kept_rather_than_replaced() -> None:
    # only absence falls back to prepare; what the builder reported is passed on for the
    # platform to judge
    body = complete_body(durable(snapshot_id=""), prepared=prepared("base"), signed_uri=None)
    assert body["snapshotId"] == ""
