"""Build planning (docs/protocol.md#plan), adapted where kiln follows Docker."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.errors import DockerfileError, PlanError, UsageError
from kiln.plan import (
    IgnoredInstruction,
    UnresolvableReference,
    default_name_for_dockerfile,
    default_name_for_image,
    normalize_posix,
    plan_dockerfile,
    plan_import,
)
from kiln.testing.strategies import dockerfiles

DIGEST = "sha256:" + "a" * 64


def _plan(text: str) -> tuple[str, bool, tuple[str, ...]]:
    plan = plan_dockerfile(text=text, context="/ctx")
    return plan.base_image, plan.base_image_is_internal_stage, plan.additional_image_references


# --- naming (items 13, 15-17, 19, 30) ---------------------------------------------------------


def test_default_name_of_a_dockerfile_is_its_directory() -> None:
    assert default_name_for_dockerfile("/tmp/example/Dockerfile") == "example"
    assert default_name_for_dockerfile("/tmp/example/dockerfile.prod") == "example"
    assert default_name_for_dockerfile("/srv/api.Dockerfile") == "api"
    assert default_name_for_dockerfile("/Dockerfile") == "sandbox-image"


@pytest.mark.parametrize(
    ("reference", "name"),
    [
        ("pytorch/pytorch:2.4.1-runtime", "pytorch"),
        (f"ghcr.io/org/app@{DIGEST}", "app"),
        ("ubuntu", "ubuntu"),
        ("ubuntu:24.04", "ubuntu"),
        ("registry:5000/team/tool", "tool"),
        ("registry:5000/", "imported-image"),
    ],
)
def test_default_name_of_an_import(reference: str, name: str) -> None:
    assert default_name_for_image(reference) == name


def test_import_plan() -> None:
    plan = plan_import("  ubuntu:24.04 ")
    assert plan.dockerfile_text == "FROM ubuntu:24.04\n"
    assert plan.base_image == "ubuntu:24.04"
    assert plan.import_image_reference == "ubuntu:24.04"
    assert plan.is_import
    assert plan.additional_image_references == ()
    assert plan.context_dir is None
    assert plan.dockerfile_path is None
    assert plan.name == "ubuntu"


def test_import_keeps_an_explicit_name_and_rejects_an_empty_reference() -> None:
    assert plan_import("ghcr.io/org/app:v1", name="my-image").name == "my-image"
    with pytest.raises(UsageError, match="must not be empty"):
        plan_import("   ")


def test_dockerfile_plan_reads_base_and_name(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM python:3.12-slim\nWORKDIR /app\nRUN echo hi\n")
    plan = plan_dockerfile(dockerfile)
    assert plan.base_image == "python:3.12-slim"
    assert plan.name == tmp_path.name
    assert plan.ignored_instructions == ()
    assert plan.context_dir == str(tmp_path)
    assert plan.dockerfile_path == str(dockerfile)
    assert not plan.is_import
    assert plan.warnings == ()


def test_relative_path_resolves_against_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "Dockerfile").write_text("FROM alpine\n")
    monkeypatch.chdir(tmp_path)
    assert plan_dockerfile().dockerfile_path == str(tmp_path / "Dockerfile")
    assert plan_dockerfile("Dockerfile").context_dir == str(tmp_path)


def test_missing_dockerfile_is_a_plan_error(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="Dockerfile not found") as caught:
        plan_dockerfile(tmp_path / "nope" / "Dockerfile")
    assert caught.value.hint


def test_non_utf8_dockerfile_is_a_plan_error(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_bytes(b"FROM alpine\nRUN echo \xff\n")
    with pytest.raises(PlanError, match="UTF-8"):
        plan_dockerfile(dockerfile)


def test_text_plan_with_explicit_context_needs_no_file(tmp_path: Path) -> None:
    plan = plan_dockerfile(
        tmp_path / "Dockerfile.generated",
        text="FROM alpine\n",
        context=tmp_path,
        name="generated",
    )
    assert plan.context_dir == str(tmp_path)
    assert plan.name == "generated"
    assert plan.dockerfile_text == "FROM alpine\n"


def test_text_without_path_is_named_after_the_context() -> None:
    plan = plan_dockerfile(text="FROM alpine\n", context="/srv/shop")
    assert (plan.name, plan.dockerfile_path, plan.context_dir) == ("shop", None, "/srv/shop")


def test_blank_explicit_name_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        plan_dockerfile(text="FROM a\n", context="/x", name="  ")


# --- ignored instructions (items 20, 24, 25) --------------------------------------------------


@pytest.mark.parametrize("line", ["ONBUILD RUN echo", 'SHELL ["/bin/bash", "-c"]'])
def test_single_ignored_instruction(line: str) -> None:
    plan = plan_dockerfile(text=f"FROM ubuntu\n{line}\n", context="/c")
    assert plan.ignored_instructions == (IgnoredInstruction(2, line.split()[0]),)
    assert len(plan.warnings) == 1
    assert line.split()[0] in plan.warnings[0]


def test_ignored_instructions_keep_file_order_and_the_text_is_verbatim() -> None:
    text = (
        'FROM ubuntu\nONBUILD RUN x\nSHELL ["sh"]\nLABEL a=b\nEXPOSE 8080\n'
        "HEALTHCHECK CMD true\nSTOPSIGNAL SIGTERM\nVOLUME /data\n"
    )
    plan = plan_dockerfile(text=text, context="/c")
    assert [item.keyword for item in plan.ignored_instructions] == [
        "ONBUILD",
        "SHELL",
        "LABEL",
        "EXPOSE",
        "HEALTHCHECK",
        "STOPSIGNAL",
        "VOLUME",
    ]
    assert [item.line for item in plan.ignored_instructions] == list(range(2, 9))
    assert plan.dockerfile_text == text
    assert "EXPOSE 8080" in plan.dockerfile_text


def test_user_cmd_entrypoint_and_arg_are_not_ignored() -> None:
    text = "ARG X\nFROM ubuntu\nUSER me\nCMD x\nENTRYPOINT y\n"
    assert plan_dockerfile(text=text, context="/c").ignored_instructions == ()


# --- unresolvable references and ARG substitution (items 21, 22) ------------------------------


def test_arg_without_default_is_unresolvable() -> None:
    plan = plan_dockerfile(text="ARG PY_TAG\nFROM python:${PY_TAG}\n", context="/c")
    assert plan.base_image == "python:${PY_TAG}"
    assert plan.unresolvable_image_references == (
        UnresolvableReference(2, "python:${PY_TAG}", "build_arg_expansion"),
    )
    assert "python:${PY_TAG}" in plan.warnings[0]


def test_undeclared_variable_is_unresolvable() -> None:
    plan = plan_dockerfile(text="FROM $IMAGE\n", context="/c")
    assert plan.unresolvable_image_references[0].reason == "build_arg_expansion"


def test_global_arg_default_is_substituted_like_docker() -> None:
    plan = plan_dockerfile(text="ARG PY=3.12\nFROM python:${PY}-slim\n", context="/c")
    assert plan.base_image == "python:3.12-slim"
    assert plan.unresolvable_image_references == ()
    assert plan.dockerfile_text == "ARG PY=3.12\nFROM python:${PY}-slim\n"


def test_arg_defaults_chain_and_operators() -> None:
    text = (
        "ARG REG=docker.io\nARG IMG=$REG/library/python\nARG V\nARG F=\n"
        "FROM ${IMG}:${V:-3.11}${F:+-}${F}\n"
    )
    assert _plan(text)[0] == "docker.io/library/python:3.11"


def test_arg_after_first_from_is_not_global() -> None:
    plan = plan_dockerfile(text="FROM a\nARG T=1\nFROM b:${T}\n", context="/c")
    assert plan.unresolvable_image_references[0].reference == "b:${T}"


def test_blank_substituted_base_is_an_error() -> None:
    with pytest.raises(DockerfileError, match="should not be blank"):
        plan_dockerfile(text="ARG X=\nFROM ${X}\n", context="/c")


DIGEST = "sha256:" + "ab" * 32


def test_digest_pin_is_unresolvable_and_kept() -> None:
    plan = plan_dockerfile(text=f"FROM python:3.12-slim@{DIGEST}\n", context="/c")
    assert plan.base_image == f"python:3.12-slim@{DIGEST}"
    assert plan.unresolvable_image_references == (
        UnresolvableReference(1, f"python:3.12-slim@{DIGEST}", "digest_pin"),
    )


def test_side_references_are_classified() -> None:
    text = f"FROM ubuntu\nCOPY --from=busybox:1.36 / /\nCOPY --from=alpine@{DIGEST} / /\n"
    plan = plan_dockerfile(text=text, context="/c")
    assert plan.additional_image_references == ("busybox:1.36",)
    assert plan.unresolvable_image_references == (
        UnresolvableReference(3, f"alpine@{DIGEST}", "digest_pin"),
    )


# --- stages, demotion, COPY --from, RUN --mount (items 23, 26-29) -----------------------------


def test_final_from_stage_alias_is_internal() -> None:
    text = "FROM ubuntu:24.04 AS base\nRUN x\nFROM base\n"
    assert _plan(text) == ("base", True, ("ubuntu:24.04",))


def test_multistage_demotes_the_earlier_base() -> None:
    text = "FROM ubuntu:24.04 AS build\nRUN x\nFROM python:3.12-slim\nCOPY --from=build /a /b\n"
    assert _plan(text) == ("python:3.12-slim", False, ("ubuntu:24.04",))


def test_copy_from_image_is_additional() -> None:
    text = "FROM python:3.12-slim\nCOPY --from=tensorlake/utility:1.0 /a /b\n"
    assert _plan(text)[2] == ("tensorlake/utility:1.0",)


def test_copy_from_stage_is_internal() -> None:
    text = "FROM ubuntu:24.04 AS builder\nFROM alpine\nCOPY --from=builder /a /b\n"
    assert _plan(text)[2] == ("ubuntu:24.04",)


def test_reference_equal_to_the_base_is_dropped() -> None:
    text = (
        "FROM python:3.12-slim AS prep\nFROM python:3.12-slim\nCOPY --from=python:3.12-slim /a /b\n"
    )
    assert _plan(text) == ("python:3.12-slim", False, ())


def test_additional_references_are_deduplicated_in_first_seen_order() -> None:
    text = (
        "FROM golang:1.22 AS a\nFROM node:20 AS b\nFROM alpine\nCOPY --from=a / /\n"
        "COPY --from=b / /\nCOPY --from=busybox / /\nCOPY --from=golang:1.22 / /\n"
        "COPY --from=busybox / /\n"
    )
    assert _plan(text)[2] == ("golang:1.22", "node:20", "busybox")


def test_scratch_is_never_an_image_to_look_up() -> None:
    text = "FROM scratch AS empty\nFROM alpine\nCOPY --from=empty / /\nCOPY --from=scratch / /\n"
    assert _plan(text) == ("alpine", False, ())


def test_numeric_copy_from_names_a_stage() -> None:
    text = "FROM golang:1.22\nRUN go build\nFROM alpine\nCOPY --from=0 /app /app\n"
    assert _plan(text) == ("alpine", False, ("golang:1.22",))


def test_stage_index_out_of_range_is_an_error() -> None:
    with pytest.raises(DockerfileError, match="invalid stage index 2") as caught:
        plan_dockerfile(text="FROM a\nFROM b\nCOPY --from=2 / /\n", context="/c")
    assert caught.value.line == 3


def test_space_separated_flag_values_are_refused_as_buildkit_refuses_them() -> None:
    for text in ("FROM alpine\nCOPY --from build /a /b\n", "FROM --platform linux/amd64 alpine\n"):
        with pytest.raises(DockerfileError, match="missing a value on flag: --"):
            plan_dockerfile(text=text, context="/c")


def test_stage_names_match_copy_from_case_insensitively_and_forward() -> None:
    text = "FROM alpine AS first\nCOPY --from=Tools /t /t\nFROM busybox AS tools\n"
    plan = plan_dockerfile(text=text, context="/c", target="first")
    assert (plan.base_image, plan.additional_image_references) == ("alpine", ("busybox",))


def test_from_matches_an_earlier_stage_name_exactly() -> None:
    text = "FROM ubuntu AS Base\nFROM base\n"
    assert _plan(text) == ("base", True, ("ubuntu",))


def test_space_separated_flag_values_do_not_confuse_boolean_flags() -> None:
    text = (
        "FROM golang AS build\nFROM alpine\n"
        "COPY --link --chown=1:1 --from=busybox /a /b\n"
        "RUN --network=none --mount=type=bind,from=node:20,target=/n make\n"
    )
    assert _plan(text)[2] == ("busybox", "node:20")


def test_double_dash_ends_the_flags() -> None:
    assert _plan("FROM alpine\nCOPY -- --from=busybox /a /b\n")[2] == ()


def test_copy_from_without_value_is_an_error() -> None:
    with pytest.raises(DockerfileError, match="missing a value on flag: --from"):
        plan_dockerfile(text="FROM a\nCOPY --from\n", context="/c")


def test_run_mount_from_any_position_and_type() -> None:
    text = (
        "FROM rust AS chef\nFROM debian\n"
        "RUN --network=none --mount=type=bind,from=chef,target=/c "
        "--mount=type=cache,target=/x,from=tensorlake/cache:1 "
        "--mount=from=busybox,type=bind,target=/b make\n"
    )
    assert _plan(text)[2] == ("rust", "tensorlake/cache:1", "busybox")


def test_platform_flag_forms() -> None:
    text = "FROM --platform=$BUILDPLATFORM golang AS b\nFROM --platform=linux/amd64 alpine\n"
    text += "COPY --from=b / /\n"
    assert _plan(text) == ("alpine", False, ("golang",))


def test_continuation_and_heredocs_do_not_confuse_planning() -> None:
    text = (
        "FROM alpine AS a\nRUN <<EOF\nFROM evil:1\nCOPY --from=evil:2 / /\nEOF\n"
        "RUN echo \\\n  # FROM evil:3\n  done\nFROM busybox\nCOPY --from=a / /\n"
    )
    assert _plan(text) == ("busybox", False, ("alpine",))


# --- FROM errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("FROM\n", 1, "FROM must include a base image"),
        ("FROM a\n\nFROM --platform=linux/amd64\n", 3, "FROM must include a base image"),
        ("FROM a b\n", 1, "unsupported FROM syntax"),
        ("FROM a AS b c\n", 1, "unsupported FROM syntax"),
        ("FROM a AS\n", 1, "FROM ... AS must include a stage name"),
        ("FROM a AS 1st\n", 1, "invalid name for build stage"),
        ("FROM --platform\n", 1, "missing a value on flag: --platform"),
    ],
)
def test_from_errors_carry_line_and_hint(text: str, line: int, message: str) -> None:
    with pytest.raises(DockerfileError) as caught:
        plan_dockerfile(text=text, context="/c")
    assert caught.value.line == line
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"line {line}: ")
    assert caught.value.hint


def test_no_from_is_a_plan_error() -> None:
    with pytest.raises(PlanError, match="must contain a FROM instruction"):
        plan_dockerfile(text="ARG X=1\n", context="/c")
    with pytest.raises(DockerfileError, match="line 2: no build stage in current context"):
        plan_dockerfile(text="ARG X=1\nRUN echo\n", context="/c")


def test_plan_records_are_validated() -> None:
    with pytest.raises(ValueError):
        UnresolvableReference(1, "x", "typo")
    with pytest.raises(ValueError):
        IgnoredInstruction(0, "EXPOSE")


# --- item 60 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "normal"), [("/a//b/../c", "/a/c"), ("", "/"), ("../..", "/"), ("a/./b/", "/a/b")]
)
def test_normalize_posix(path: str, normal: str) -> None:
    assert normalize_posix(path) == normal


# --- properties ------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_text_plans_or_raises_a_plan_error(text: str) -> None:
    try:
        plan = plan_dockerfile(text=text, context="/c")
    except PlanError:
        return
    assert plan.dockerfile_text == text
    assert plan.base_image


@settings(max_examples=150, deadline=None)
@given(dockerfiles())
def test_generated_dockerfiles_plan_consistently(text: str) -> None:
    try:
        plan = plan_dockerfile(text=text, context="/c")
    except PlanError:
        return
    assert plan.base_image not in plan.additional_image_references
    assert len(set(plan.additional_image_references)) == len(plan.additional_image_references)
    assert all("$" not in ref and "@" not in ref for ref in plan.additional_image_references)
    assert all(ref.lower() != "scratch" for ref in plan.additional_image_references)
    assert len(plan.warnings) == len(plan.ignored_instructions) + len(
        plan.unresolvable_image_references
    )
