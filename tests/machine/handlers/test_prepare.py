"""Which final FROM may name a registered template (docs/protocol.md#template-lookup)."""

from __future__ import annotations

import pytest

from kiln.machine.handlers.prepare import parent_is_eligible
from kiln.plan import plan_dockerfile, plan_import


@pytest.mark.parametrize(
    ("dockerfile", "eligible"),
    [
        ("FROM python:3.12-slim\n", True),
        ("FROM my-template\n", True),
        ("FROM scratch\nCOPY a /a\n", False),
        ("FROM ubuntu:24.04 AS base\nFROM base\n", False),
        ("FROM python@sha256:" + "a" * 64 + "\n", False),
        ("ARG TAG\nFROM python:${TAG}\n", False),
    ],
)
def test_parent_lookup_eligibility(dockerfile: str, eligible: bool, tmp_path: object) -> None:
    plan = plan_dockerfile(text=dockerfile, context=str(tmp_path), name="x")
    assert parent_is_eligible(plan) is eligible


def test_imports_never_look_up_a_parent() -> None:
    assert parent_is_eligible(plan_import("ubuntu:24.04")) is False
