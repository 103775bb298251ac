"""Template payloads, CAS rejection and the prepare body (docs/protocol.md#template-lookup,
docs/protocol.md#prepare)."""

from __future__ import annotations

from typing import Any

import pytest

from kiln.errors import ResponseError, UsageError
from kiln.machine.protocol import (
    CAS_FORMAT,
    DURABLE_FORMAT,
    is_cas_template,
    prepare_body,
    reject_cas_templates,
    template_payload,
)

REFERENCE = "tensorlake/ubuntu-minimal"


def template(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "id": "tmpl-1",
        "name": "ubuntu-minimal",
        "snapshotId": "snap-1",
        "public": True,
    }
    raw.update(overrides)
    return {key: value for key, value in raw.items() if value is not None}


@pytest.mark.parametrize(
    ("kind", "fmt"),
    [("diff", DURABLE_FORMAT), ("base", CAS_FORMAT), ("diff", "future_format_v9"), (None, None)],
)
def test_template_payload_ignores_kind_and_format(kind: str | None, fmt: str | None) -> None:
    # the template payload ignores kind and format (docs/protocol.md#template-lookup)
    raw = template(rootfsNodeKind=kind, snapshotFormatVersion=fmt)
    assert template_payload(REFERENCE, raw) == {
        "templateId": "tmpl-1",
        "name": "ubuntu-minimal",
        "reference": REFERENCE,
        "snapshotId": "snap-1",
        "public": True,
    }


def test_template_payload_keeps_the_users_exact_reference() -> None:
    payload = template_payload("Tensorlake/Ubuntu-Minimal:latest", template())
    assert payload["reference"] == "Tensorlake/Ubuntu-Minimal:latest"


def test_public_defaults_to_false() -> None:
    raw = template()
    del raw["public"]
    assert template_payload(REFERENCE, raw)["public"] is False


@pytest.mark.parametrize(
    ("key", "ending"),
    [("id", "without an id"), ("name", "without a name"), ("snapshotId", "without a snapshot id")],
)
def test_template_missing_a_required_field_is_a_response_error(key: str, ending: str) -> None:
    # a template missing a required field (docs/protocol.md#template-lookup)
    raw = template()
    del raw[key]
    with pytest.raises(ResponseError) as caught:
        template_payload(REFERENCE, raw)
    assert str(caught.value).endswith(ending)
    assert REFERENCE in str(caught.value)


def test_is_cas_template_looks_at_the_snapshot_format_only() -> None:
    assert is_cas_template(template(snapshotFormatVersion=CAS_FORMAT))
    assert not is_cas_template(template(snapshotFormatVersion=DURABLE_FORMAT))
    assert not is_cas_template(template(rootfsNodeKind="diff"))


def test_cas_parent_is_rejected_naming_the_reference() -> None:
    cas = template(snapshotFormatVersion=CAS_FORMAT)
    with pytest.raises(UsageError) as caught:
        reject_cas_templates(("python:3.12-slim", cas), [])
    assert "python:3.12-slim" in str(caught.value)
    assert caught.value.hint is not None
    assert "--cas" in caught.value.hint
    assert "cas=True" in caught.value.hint


def test_parent_is_checked_before_additional_references() -> None:
    cas = template(snapshotFormatVersion=CAS_FORMAT)
    with pytest.raises(UsageError, match="'parent-ref'"):
        reject_cas_templates(("parent-ref", cas), [("extra-ref", cas)])


def test_cas_additional_reference_is_rejected() -> None:
    cas = template(snapshotFormatVersion=CAS_FORMAT)
    durable = template(snapshotFormatVersion=DURABLE_FORMAT)
    with pytest.raises(UsageError, match="'extra-2'"):
        reject_cas_templates(None, [("extra-1", durable), ("extra-2", cas)])


def test_non_cas_hits_pass() -> None:
    durable = template(snapshotFormatVersion=DURABLE_FORMAT)
    reject_cas_templates(("p", durable), [("a", template()), ("b", durable)])
    reject_cas_templates(None, [])


def test_prepare_body_with_a_parent_is_a_diff() -> None:
    # a prepare body with a parent and another image (docs/protocol.md#prepare)
    parent = template_payload("parent-ref", template())
    extra = template_payload("extra-ref", template(id="tmpl-2"))
    body = prepare_body(
        name="child",
        dockerfile="FROM parent-ref\n",
        base_image="parent-ref",
        public=False,
        parent=parent,
        additional=[extra],
    )
    assert "rootfsFormat" not in body
    assert body == {
        "name": "child",
        "dockerfile": "FROM parent-ref\n",
        "baseImage": "parent-ref",
        "public": False,
        "rootfsNodeKind": "diff",
        "parentTemplate": parent,
        "additionalLocalImages": [extra],
    }


def test_prepare_body_without_a_parent_is_a_base_with_a_null_parent() -> None:
    # a prepare body without a parent (docs/protocol.md#prepare)
    body = prepare_body(
        name="hello",
        dockerfile="FROM python:3.12-slim\n",
        base_image="python:3.12-slim",
        public=True,
        parent=None,
        additional=[],
    )
    assert "rootfsFormat" not in body
    assert body["rootfsNodeKind"] == "base"
    assert body["parentTemplate"] is None
    assert "parentTemplate" in body
    assert body["additionalLocalImages"] == []
    assert body["public"] is True


def test_non_string_required_field_counts_as_missing() -> None:
    with pytest.raises(ResponseError, match="without an id"):
        template_payload(REFERENCE, template(id=17))
