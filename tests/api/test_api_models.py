"""Wire models: tolerant of unknown keys, strict and precise about missing or mistyped ones."""

from typing import Any

import pytest

from kiln.api import (
    ExitStatus,
    PreparedBuild,
    ProcessInfo,
    RunResult,
    Template,
    exit_status,
    run_exit_code,
    template_payload,
)
from kiln.api._models import OutputEvent, RunExited, RunStarted, parse_run_event, structure
from kiln.errors import ResponseError

BUILDER = {
    "image": "tensorlake/rootfs-builder",
    "command": "tl-rootfs-build",
    "cpus": 2,
    "memoryMb": 4096,
    "diskMb": 30720,
}


def prepared(**extra: Any) -> dict[str, Any]:
    return {
        "buildId": "build-1",
        "snapshotId": "snapshot-1",
        "rootfsNodeKind": "base",
        "builder": dict(BUILDER),
        **extra,
    }


def process(**fields: Any) -> ProcessInfo:
    data = {"pid": 42, "status": "running", "command": "c", "started_at": 1.5, **fields}
    return structure(data, ProcessInfo, "process")


# snapshotRelPath is read, a legacy snapshotUri kept (docs/protocol.md#prepare-response)
def test_prepared_parses_snapshot_rel_path_and_keeps_legacy_uri() -> None:
    uri = "s3://bucket/snapshot.tlsnap"
    new = structure(
        prepared(snapshotUri=uri, snapshotRelPath="snapshots/abc.tlsnap"), PreparedBuild, "p"
    )
    assert new.snapshot_rel_path == "snapshots/abc.tlsnap"
    legacy = structure(prepared(snapshotUri=uri), PreparedBuild, "p")
    assert legacy.snapshot_rel_path is None
    assert legacy.snapshot_uri == uri


# a prepare response without snapshotUri (docs/protocol.md#prepare-response)
def test_prepared_parses_without_snapshot_uri() -> None:
    parsed = structure(prepared(snapshotRelPath="snapshots/abc.tlsnap"), PreparedBuild, "p")
    assert parsed.snapshot_uri is None
    assert parsed.builder.cpus == 2.0
    assert parsed.builder.memory_mb == 4096
    assert parsed.parent is None


def test_prepared_keeps_raw_and_ignores_unknown_keys() -> None:
    data = prepared(
        upload={"kind": "single_put"},
        runtimeContract={"v": 1},
        parent={"parentManifestUri": "s3://p", "rootfsDiskBytes": 21474836480, "new": True},
        rootfsFormat="ext4",
    )
    parsed = structure(data, PreparedBuild, "p")
    assert parsed.raw == data
    assert parsed.parent is not None and parsed.parent.rootfs_disk_bytes == 21474836480
    assert parsed.rootfs_format == "ext4"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (prepared(builder={k: v for k, v in BUILDER.items() if k != "cpus"}), "builder.cpus"),
        ({k: v for k, v in prepared().items() if k != "buildId"}, "missing field buildId"),
        (prepared(parent={}), "missing field parent.parentManifestUri"),
    ],
)
def test_missing_field_is_named_by_its_wire_path(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ResponseError, match=f"^prepare response: .*{message}"):
        structure(data, PreparedBuild, "prepare response")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (prepared(builder={**BUILDER, "memoryMb": "4096"}), "invalid field builder.memoryMb"),
        (prepared(builder={**BUILDER, "cpus": True}), "invalid field builder.cpus"),
        (prepared(builder=None), "invalid field builder: expected an object"),
        (prepared(rootfsNodeKind="layer"), "invalid field rootfsNodeKind"),
        (prepared(builder={**BUILDER, "diskMb": -1}), "disk_mb"),
        (prepared(buildId=None), "invalid field buildId"),
    ],
)
def test_wrong_types_are_rejected_not_coerced(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ResponseError, match=message):
        structure(data, PreparedBuild, "prepare response")


def test_non_object_body_is_rejected() -> None:
    with pytest.raises(ResponseError, match="expected a JSON object, got list"):
        structure([], PreparedBuild, "prepare response")


def test_process_list_error_names_the_index() -> None:
    with pytest.raises(ResponseError, match=r"invalid field args\[1\]"):
        process(args=["ok", 7])


@pytest.mark.parametrize(
    ("kind", "fmt"),
    [
        ("diff", "durable_archive_v1"),
        ("base", "content_addressed_streaming_v1"),
        ("diff", "future_v9"),
        (None, None),
    ],
)
def test_template_payload_ignores_kind_and_format(kind: str | None, fmt: str | None) -> None:
    # the template payload ignores kind and format (docs/protocol.md#template-lookup)
    data = {"id": "tmpl-1", "name": "ubuntu-minimal", "snapshotId": "snap-1", "public": True}
    if kind:
        data["rootfsNodeKind"] = kind
    if fmt:
        data["snapshotFormatVersion"] = fmt
    template = structure(data, Template, "template")
    assert template_payload(template, "tensorlake/ubuntu-minimal") == {
        "templateId": "tmpl-1",
        "name": "ubuntu-minimal",
        "reference": "tensorlake/ubuntu-minimal",
        "snapshotId": "snap-1",
        "public": True,
    }


def test_template_public_defaults_to_false() -> None:
    template = structure({"id": "t", "name": "n", "snapshotId": "s"}, Template, "template")
    assert template_payload(template, "n")["public"] is False


# an OOM kill with a signal (docs/protocol.md#process-status)
def test_oom_killed_process_exit_status() -> None:
    info = process(status="oom_killed", signal=9, oom_killed=True, ended_at=456)
    assert exit_status(info) == ExitStatus(code=-9, oom=True)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"status": "oom_killed"}, ExitStatus(-9, True)),
        ({"status": "exited", "exit_code": 137, "oom_killed": True}, ExitStatus(137, True)),
        (
            {"status": "exited", "managed": {"last_exit": {"oom_killed": True}}},
            ExitStatus(-9, True),
        ),
        ({"status": "exited", "exit_code": 3, "signal": 9}, ExitStatus(3, False)),
        ({"status": "signaled", "signal": 15}, ExitStatus(-15, False)),
        ({"status": "exited"}, ExitStatus(0, False)),
        ({"status": "running"}, None),
        ({"status": "running", "exit_code": 0}, ExitStatus(0, False)),
    ],
)
def test_exit_status_rules_in_order(fields: dict[str, Any], expected: ExitStatus | None) -> None:
    assert exit_status(process(**fields)) == expected


@pytest.mark.parametrize(
    ("exit_code", "signal", "oom", "expected"),
    [
        (0, None, False, 0),
        (2, None, False, 2),
        (None, 15, False, -15),
        (3, 9, False, 3),
        (None, None, True, -9),
        (137, None, True, 137),
        (137, 9, True, -9),
        (None, None, False, 0),
    ],
)
def test_a_run_s_exit_code_is_decided_as_a_process_s(
    exit_code: int | None, signal: int | None, oom: bool, expected: int
) -> None:
    result = RunResult(None, exit_code, signal, oom, [], [])
    assert run_exit_code(result) == expected


def test_process_info_requires_started_at_but_allows_null() -> None:
    assert process(started_at=None).started_at is None
    with pytest.raises(ResponseError, match="missing field started_at"):
        structure({"pid": 1, "status": "running", "command": "c"}, ProcessInfo, "process")


# the run events (docs/protocol.md#one-shot-run)
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"pid": 7, "started_at": 1.0}, RunStarted(pid=7, started_at=1.0)),
        ({"line": "hi", "timestamp": 2.0}, OutputEvent(line="hi", timestamp=2.0)),
        (
            {"line": "oops", "timestamp": 2.0, "stream": "stderr"},
            OutputEvent(line="oops", timestamp=2.0, stream="stderr"),
        ),
        ({"exit_code": 0}, RunExited(exit_code=0)),
        ({"signal": 9}, RunExited(signal=9)),
        ({"signal": 9, "oom_killed": True}, RunExited(signal=9, oom_killed=True)),
        ({"oom_killed": True}, None),
        ({"line": "no timestamp"}, None),
        ("heartbeat", None),
    ],
)
def test_run_events_parse_in_order(data: Any, expected: Any) -> None:
    assert parse_run_event(data) == expected
