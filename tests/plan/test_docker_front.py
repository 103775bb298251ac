"""Planning as `docker build` plans: BuildKit's refusals, build args, targets, platforms."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.errors import DockerfileError, KilnError, UsageError
from kiln.plan import parse_dockerfile, plan_dockerfile, plan_import
from kiln.plan.instructions import levenshtein, suggest


def _refusal(text: str, **options: object) -> KilnError:
    """Planning fails with a usage or plan error: both exit 2 before any request."""
    with pytest.raises(KilnError) as caught:
        plan_dockerfile(text=text, context="/c", **options)  # type: ignore[arg-type]
    return caught.value


# --- BuildKit's refusals, in its words -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("FROM a\nRUNN echo hi\n", 2, "unknown instruction: RUNN (did you mean RUN?)"),
        ("FROM a\nrunn echo hi\n", 2, "unknown instruction: runn (did you mean run?)"),
        ("FROM a\nFROBNICATE z\n", 2, "unknown instruction: FROBNICATE"),
        ("FROM a\nCOPY --frm=x a b\n", 2, "unknown flag: --frm (did you mean from?)"),
        ("FROM a\nCMD --x echo\n", 2, "unknown flag: --x"),
        ("FROM a\nCOPY --link=maybe a b\n", 2, "expecting boolean value for flag --link"),
        ("FROM a\nCOPY --from=a --from=b x y\n", 2, "duplicate flag specified: --from"),
        ("FROM a AS b\nCOPY --from=$X a b\n", 2, "variable expansion is not supported for --from"),
        ("FROM a\nCOPY --from=${X} a b\n", 2, "variable expansion is not supported for --from"),
        (
            "FROM a\nRUN --mount=type=bind,from=$X,target=/x true\n",
            2,
            "'from' doesn't support variable expansion, define alias stage instead",
        ),
        ("FROM a AS Bad!\n", 1, 'invalid name for build stage: "Bad!"'),
        (
            "FROM ubuntu AS builder\nFROM Builder\n",
            2,
            'failed to parse stage name "Builder": invalid reference format: repository name '
            "(library/Builder) must be lowercase",
        ),
        ("FROM ubuntu:bad tag\n", 1, "unsupported FROM syntax"),
        ("FROM ubuntu::x\n", 1, 'failed to parse stage name "ubuntu::x": invalid reference'),
        ("FROM a\nCOPY --from=Bad:Ref x y\n", 2, 'failed to parse stage name "Bad:Ref"'),
        ("RUN x\nFROM a\n", 1, "no build stage in current context"),
    ],
)
def test_buildkit_refusals(text: str, line: int, message: str) -> None:
    error = _refusal(text)
    assert isinstance(error, DockerfileError)
    assert error.line == line
    assert message in str(error)
    assert error.hint


def test_healthcheck_none_and_arg_do_not_check_flags_as_buildkit() -> None:
    plan_dockerfile(text="FROM a\nHEALTHCHECK --interval=1s NONE\nARG --x Y\n", context="/c")
    plan_dockerfile(text="FROM a\nHEALTHCHECK --interval=5s CMD true\n", context="/c")
    assert "unknown flag: --bogus" in str(_refusal("FROM a\nHEALTHCHECK --bogus=1 CMD x\n"))


def test_suggestions_follow_buildkits_search() -> None:
    assert levenshtein("kitten", "sitting") == 3
    assert suggest("RUNN", ["RUN", "CMD"], case_sensitive=False) == "RUN"
    assert suggest("Runn", ["RUN"], case_sensitive=False) == "run"
    assert suggest("RUN", ["RUN"], case_sensitive=False) is None  # exact: not the problem
    assert suggest("frobnicate", ["from"], case_sensitive=True) is None  # too far


# --- targets -------------------------------------------------------------------------------------

MULTI = """\
FROM golang:1.22 AS build
RUN go build
FROM node:20 AS assets
RUN npm ci
FROM python:3.12-slim AS final
COPY --from=build /app /app
FROM alpine AS debug
"""


def test_unknown_target_is_buildkits_message_with_a_suggestion() -> None:
    error = _refusal(MULTI, target="buidl")
    assert isinstance(error, UsageError)
    assert 'target stage "buidl" could not be found (did you mean build?)' in str(error)


def test_target_is_matched_case_insensitively_and_cuts_later_stages() -> None:
    plan = plan_dockerfile(text=MULTI, context="/c", target="FINAL")
    assert plan.base_image == "python:3.12-slim"
    assert plan.additional_image_references == ("golang:1.22",)  # node:20 is not reached
    assert plan.dockerfile_text == MULTI.split("FROM alpine")[0]


def test_a_target_that_copies_from_a_later_stage_ends_with_it() -> None:
    text = "FROM alpine AS first\nCOPY --from=tools /t /t\nFROM busybox AS tools\nFROM scratch\n"
    plan = plan_dockerfile(text=text, context="/c", target="first")
    sent = plan.dockerfile_text
    assert (
        sent == "FROM alpine AS first\nCOPY --from=tools /t /t\nFROM busybox AS tools\nFROM first\n"
    )
    assert [i.keyword for i in parse_dockerfile(sent).instructions][-1] == "FROM"


def test_images_of_unreached_stages_are_neither_needed_nor_warned_about() -> None:
    text = (
        "FROM ghost:${NOPE} AS unused\nEXPOSE 1\nFROM golang AS b\nFROM alpine\nCOPY --from=b / /\n"
    )
    plan = plan_dockerfile(text=text, context="/c")
    assert plan.additional_image_references == ("golang",)
    assert plan.unresolvable_image_references == ()
    assert plan.warnings == ()


# --- platform ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "platform",
    ["linux/amd64", "LINUX/AMD64", "amd64", "linux/x86_64", "linux/x86-64", "linux/amd64/v1"],
)
def test_the_builders_platform_is_accepted_in_its_spellings(platform: str) -> None:
    plan_dockerfile(text="FROM a\n", context="/c", platform=platform)


@pytest.mark.parametrize(
    "platform", ["linux/arm64", "windows/amd64", "arm64", "linux/amd64,linux/arm64", ""]
)
def test_other_platforms_are_refused_saying_why(platform: str) -> None:
    error = _refusal("FROM a\n", platform=platform)
    assert isinstance(error, UsageError)
    assert "linux/amd64" in str(error)


def test_automatic_platform_args_resolve_in_from() -> None:
    text = (
        "FROM base-$TARGETARCH AS base-amd64\nRUN x\n"
        "FROM --platform=$BUILDPLATFORM golang AS build\n"
        "FROM base-${TARGETARCH}\nCOPY --from=build / /\nRUN echo ${TARGETOS}\n"
    )
    plan = plan_dockerfile(text=text, context="/c")
    assert plan.base_image == "base-amd64"
    assert plan.base_image_is_internal_stage is True
    assert plan.additional_image_references == ("base-amd64", "golang")
    assert plan.unresolvable_image_references == ()


def test_target_stage_arg_names_the_target() -> None:
    text = "FROM img:${TARGETSTAGE} AS one\nFROM img:$TARGETSTAGE AS two\n"
    assert plan_dockerfile(text=text, context="/c", target="one").base_image == "img:one"
    assert plan_dockerfile(text=text, context="/c").base_image == "img:two"


# --- build args ----------------------------------------------------------------------------------


def test_build_args_resolve_from_and_are_declared_in_every_scope() -> None:
    text = (
        "ARG PY=3.11\nARG UNUSED_DEFAULT=x\nFROM python:${PY}-slim\nARG PY\n"
        "RUN echo $PY\nFROM python:${PY}-slim AS other\nARG PY=9 \\\n  OTHER=1\n"
    )
    plan = plan_dockerfile(text=text, context="/c", build_args={"PY": "3.12"}, target=None)
    assert plan.base_image == "python:3.12-slim"
    sent = plan.dockerfile_text.split("\n")
    assert sent[0] == "ARG PY='3.12'"
    assert sent[1] == "ARG UNUSED_DEFAULT=x"
    assert sent[3] == "ARG PY='3.12'"
    assert sent[6] == "ARG PY='3.12' OTHER=1"
    assert sent[7] == ""  # the continuation line is blank: later lines keep their numbers
    assert len(sent) == len(text.split("\n"))


def test_build_arg_values_are_sent_literally() -> None:
    plan = plan_dockerfile(text="FROM a\nARG V\n", context="/c", build_args={"V": "it's $HOME"})
    assert plan.dockerfile_text == "FROM a\nARG V='it'\"'\"'s $HOME'\n"


def test_a_build_arg_with_a_line_break_is_refused() -> None:
    assert isinstance(_refusal("FROM a\nARG V\n", build_args={"V": "a\nb"}), UsageError)


def test_unconsumed_build_args_get_dockers_warning() -> None:
    plan = plan_dockerfile(
        text="FROM a\nARG USED\n", context="/c", build_args={"USED": "1", "ZED": "2", "ALPHA": "3"}
    )
    assert "One or more build-args [ALPHA ZED] were not consumed" in plan.warnings


def test_proxy_args_need_no_declaration_and_are_never_unconsumed() -> None:
    text = "FROM a AS one\nRUN x\nFROM b\nRUN y\n"
    plan = plan_dockerfile(text=text, context="/c", build_args={"HTTP_PROXY": "http://p:3128"})
    assert plan.warnings == ()
    assert plan.dockerfile_text == (
        "FROM a AS one\nARG HTTP_PROXY='http://p:3128'\nRUN x\n"
        "FROM b\nARG HTTP_PROXY='http://p:3128'\nRUN y\n"
    )


def test_without_options_the_text_is_sent_verbatim() -> None:
    text = "ARG X=1\nFROM a:$X AS s\nFROM b\n"
    assert plan_dockerfile(text=text, context="/c").dockerfile_text == text


def test_a_build_arg_not_declared_before_from_is_not_in_froms_scope() -> None:
    plan = plan_dockerfile(text="FROM img:${TAG}\nARG TAG\n", context="/c", build_args={"TAG": "1"})
    assert plan.base_image == "img:${TAG}"  # BuildKit expands it to "img:" and fails to pull


# --- references and names --------------------------------------------------------------------


@pytest.mark.parametrize("reference", ["Ubuntu", "ubuntu::1", "a b", "ubuntu@sha256:abc", "-x"])
def test_import_refuses_invalid_references(reference: str) -> None:
    with pytest.raises(UsageError, match="invalid image reference"):
        plan_import(reference)


@pytest.mark.parametrize("reference", ["ubuntu", "Example.com/org/app:v1", "localhost:5000/a/b:c"])
def test_import_accepts_valid_references(reference: str) -> None:
    assert plan_import(reference).import_image_reference == reference


@pytest.mark.parametrize("name", ["a/b", " x", "x\ty", "..", "n" * 256])
def test_names_the_platform_cannot_take_are_refused(name: str) -> None:
    with pytest.raises(UsageError, match="image name"):
        plan_import("ubuntu", name=name)


# --- COPY/ADD sources ----------------------------------------------------------------------------


@pytest.fixture
def context(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text("x")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "README.md").write_text("r")
    (tmp_path / "secret.txt").write_text("s")
    (tmp_path / ".dockerignore").write_text("secret.txt\ndocs\n!docs/README.md\n")
    return tmp_path


def _plan_in(context: Path, body: str) -> None:
    plan_dockerfile(text="FROM a\n" + body, context=context, check_sources=True)


@pytest.mark.parametrize(
    "body",
    [
        "COPY app.py /app/\n",
        "COPY ./app.py /app/\n",
        "COPY /app.py /app/\n",
        "COPY ../app.py /app/\n",  # `..` cannot leave the context: it is the root
        "COPY *.md nothing-matches* /x/\n",
        "COPY docs /docs\n",
        'COPY ["app.py", "/app/"]\n',
        "COPY . /src\n",
        "ADD https://example.com/x.tgz /x\n",
        "COPY --from=b missing /x\n",
        "COPY $SRC /x\n",
        "COPY <<EOF /x\nhi\nEOF\n",
    ],
)
def test_sources_present_or_not_literal_are_accepted(context: Path, body: str) -> None:
    _plan_in(context, body)


def test_a_missing_literal_source_names_line_and_path(context: Path) -> None:
    with pytest.raises(DockerfileError) as caught:
        _plan_in(context, "RUN x\nCOPY app.py missing.py /app/\n")
    assert caught.value.line == 3
    assert 'COPY source "missing.py": not found in the build context' in str(caught.value)


def test_a_source_excluded_by_dockerignore_is_refused(context: Path) -> None:
    with pytest.raises(DockerfileError, match=r"excluded from the build context by \.dockerignore"):
        _plan_in(context, "ADD secret.txt /s\n")


def test_sources_of_unreached_stages_are_not_checked(context: Path) -> None:
    plan_dockerfile(
        text="FROM a AS old\nCOPY gone /x\nFROM b\nCOPY app.py /\n",
        context=context,
        check_sources=True,
    )
