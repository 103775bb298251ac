"""Differential test of planning: kiln's planner against a model of BuildKit's built on its parser.

The oracle (the PyPI `dockerfile` package) is BuildKit's own parser. On its syntax tree this
module re-states, from BuildKit's source and independently of kiln's code, what
``instructions.Parse`` and ``dockerfile2llb`` refuse and resolve: known instructions and their
flags, ``--from`` without variables, stage names, base references (by
distribution/reference's grammar, re-written here), the target and the stages it reaches, and
the images those stages need. kiln and the model must refuse the same Dockerfiles and, for the
rest, agree on the base image, whether it is a stage, and the images needed.

The model keeps kiln's one documented difference: a variable with no value leaves a reference
unresolvable (the builder pulls it) where BuildKit expands it to nothing.
"""

from __future__ import annotations

import re
from typing import Any

import dockerfile as buildkit
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln.errors import KilnError
from kiln.plan import plan_dockerfile
from kiln.plan.stages import resolve_stages
from kiln.testing.strategies import dockerfiles

# BuildKit's instructions/parse.go: the flags each instruction defines.
FLAGS = {
    "add": {"chown", "chmod", "link", "keep-git-dir", "checksum", "unpack", "exclude"},
    "copy": {"chown", "from", "chmod", "link", "exclude", "parents"},
    "from": {"platform"},
    "run": {"mount", "network", "security", "device"},
    "healthcheck": {"interval", "timeout", "start-period", "start-interval", "retries"},
}
REPEATABLE = {"exclude", "mount", "device"}
BOOLEAN = {"link", "keep-git-dir", "unpack", "parents"}
AUTOMATIC = {
    **dict.fromkeys(("BUILDPLATFORM", "TARGETPLATFORM"), "linux/amd64"),
    **dict.fromkeys(("BUILDOS", "TARGETOS"), "linux"),
    **dict.fromkeys(("BUILDARCH", "TARGETARCH"), "amd64"),
    **dict.fromkeys(("BUILDOSVERSION", "BUILDVARIANT", "TARGETOSVERSION", "TARGETVARIANT"), ""),
}
STAGE_NAME = re.compile(r"^[a-z][a-z0-9-_.]*$")
# distribution/reference, written out whole.
COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
DOMAIN = rf"(?:{LABEL}(?:\.{LABEL})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
REFERENCE = re.compile(
    rf"^(?:{DOMAIN}/)?{COMPONENT}(?:/{COMPONENT})*(?::[\w][\w.-]{{0,127}})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$",
    re.ASCII,
)
VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


class Refused(Exception):
    pass


def valid_reference(ref: str) -> bool:
    first, slash, rest = ref.partition("/")
    is_domain = slash and (
        "." in first or ":" in first or first == "localhost" or first != first.lower()
    )
    remote = (rest if is_domain else ref).split(":")[0].split("@")[0]
    if remote != remote.lower() or re.fullmatch(r"[a-f0-9]{64}", ref):
        return False
    if not REFERENCE.match(ref):
        return False
    digest = ref.partition("@")[2]
    return not digest or (digest.startswith("sha256:") and len(digest) == 7 + 64)


def substitute(word: str, scope: dict[str, str | None]) -> str | None:
    missing = False

    def one(match: re.Match[str]) -> str:
        nonlocal missing
        value = scope.get(match.group(1) or match.group(2))
        if value is None:
            missing = True
            return match.group(0)
        return value

    result = VARIABLE.sub(one, word)
    return None if missing or "$" in result else result


def check_flags(command: Any) -> None:
    cmd = command.cmd.lower()
    if cmd in ("arg", "stopsignal"):
        return
    if cmd == "healthcheck" and command.value and command.value[0].upper() == "NONE":
        return
    seen: set[str] = set()
    for flag in command.flags:
        if flag == "--":
            return
        name, eq, value = flag[2:].partition("=")
        if name not in FLAGS.get(cmd, set()):
            raise Refused(f"unknown flag {name}")
        if name in seen and name not in REPEATABLE:
            raise Refused("duplicate flag")
        seen.add(name)
        if name in BOOLEAN:
            if eq and value.lower() not in ("true", "false"):
                raise Refused("bad boolean")
        elif not eq:
            raise Refused("missing value")


def model(text: str, target: str | None, build_args: dict[str, str]) -> tuple[Any, ...]:
    """(base image, base is a stage, images needed, stages reached) as BuildKit resolves them."""
    try:
        commands = buildkit.parse_string(text)
    except buildkit.GoParseError as error:
        raise Refused(str(error)) from None
    known = set(buildkit.all_cmds())
    meta: list[Any] = []
    stages: list[dict[str, Any]] = []
    for command in commands:
        if command.cmd.lower() not in known:
            raise Refused("unknown instruction")
        check_flags(command)
        if command.cmd.lower() == "from":
            stages.append({"from": command, "body": []})
        elif stages:
            stages[-1]["body"].append(command)
        elif command.cmd.lower() == "arg":
            meta.append(command)
        else:
            raise Refused("no build stage")
    if not stages:
        raise Refused("no stages")
    names: list[str | None] = []
    for stage in stages:
        words = stage["from"].value
        if len(words) == 3 and words[1].lower() == "as":
            if not STAGE_NAME.match(words[2].lower()):
                raise Refused("stage name")
            names.append(words[2].lower())
        elif len(words) == 1:
            names.append(None)
        else:
            raise Refused("FROM arguments")
    if target is not None and target.lower() not in names:
        raise Refused("target")
    target_index = names.index(target.lower()) if target else len(stages) - 1
    scope: dict[str, str | None] = {k: build_args.get(k, v) for k, v in AUTOMATIC.items()}
    scope["TARGETSTAGE"] = build_args.get("TARGETSTAGE", target or names[-1] or "default")
    for command in meta:
        for word in command.value:
            key, eq, default = word.partition("=")
            if key in build_args:
                scope[key] = build_args[key]
            elif eq:
                scope[key] = substitute(default.strip("\"'"), scope)
            else:
                scope.setdefault(key, None)
    bases: list[tuple[str | None, int | None]] = []
    deps: list[list[int]] = []
    images: list[list[str]] = []
    for index, stage in enumerate(stages):
        written = stage["from"].value[0]
        image = substitute(written, scope)
        if image == "":
            raise Refused("blank base")
        earlier = range(index) if image is not None else range(0)
        base_stage = next((i for i in earlier if names[i] == image), None)
        plain = image is not None and base_stage is None and image != "scratch"
        if plain and not valid_reference(str(image)):
            raise Refused("base reference")
        bases.append((image if image is None or "@" not in image else None, base_stage))
        stage_deps: list[int] = []
        stage_images: list[str] = []
        for command in stage["body"]:
            for value, is_copy in side_values(command):
                if is_copy and re.fullmatch(r"[+-]?[0-9]+", value):
                    if not 0 <= int(value) < len(stages):
                        raise Refused("stage index")
                    stage_deps.append(int(value))
                elif value.lower() in names:
                    stage_deps.append(names.index(value.lower()))
                elif value != "scratch":
                    if not valid_reference(value):
                        raise Refused("from reference")
                    if "@" not in value:
                        stage_images.append(value)
        deps.append(stage_deps)
        images.append(stage_images)
    reached = {target_index}
    pending = [target_index]
    while pending:
        index = pending.pop()
        for other in [*deps[index], *([bases[index][1]] if bases[index][1] is not None else [])]:
            if other not in reached:
                reached.add(other)
                pending.append(other)
    needed = set()
    for index in reached:
        needed.update(images[index])
        image, base_stage = bases[index]
        if index != target_index and base_stage is None and image not in (None, "scratch"):
            needed.add(image)
    final_image, final_stage = bases[target_index]
    if final_stage is None:
        needed.discard(final_image)
    return final_image, final_stage is not None, frozenset(needed), frozenset(reached)


def side_values(command: Any) -> list[tuple[str, bool]]:
    found = []
    for flag in command.flags:
        if flag == "--":
            break
        if command.cmd.lower() == "copy" and flag.startswith("--from="):
            value = flag[len("--from=") :]
            if any(ch in value for ch in "$'\"\\"):
                raise Refused("variable in --from")
            found.append((value, True))
        elif command.cmd.lower() == "run" and flag.startswith("--mount="):
            for part in flag[len("--mount=") :].split(","):
                key, eq, value = part.partition("=")
                if key.strip().lower() == "from" and eq:
                    if "$" in value[:-1]:
                        raise Refused("variable in mount from")
                    if value:
                        found.append((value, False))
    return found


def kiln_view(text: str, target: str | None, build_args: dict[str, str]) -> tuple[Any, ...]:
    try:
        plan = plan_dockerfile(text=text, context="/c", target=target, build_args=build_args)
        reached = frozenset(s.index for s in resolve_stages(text, build_args, target).reachable())
    except KilnError as error:
        raise Refused(str(error)) from None
    unresolvable = {ref.reference for ref in plan.unresolvable_image_references}
    base = None if plan.base_image in unresolvable else plan.base_image
    needed = frozenset(plan.additional_image_references)
    return base, plan.base_image_is_internal_stage, needed, reached


def outcome(view: Any, text: str, target: str | None, args: dict[str, str]) -> Any:
    try:
        return view(text, target, args)
    except Refused:
        return "refused"


def assert_agree(text: str, target: str | None = None, args: dict[str, str] | None = None) -> None:
    args = args or {}
    assert outcome(kiln_view, text, target, args) == outcome(model, text, target, args)


HAND_WRITTEN = [
    "FROM alpine\nRUNN echo hi\n",
    "FROM alpine\nrun echo hi\nCoPy a b\n",
    "FROM alpine\nCOPY --frm=x a b\n",
    "FROM alpine\nCOPY --from=$X a b\n",
    "FROM alpine\nCOPY --from=${X} a b\n",
    "FROM alpine\nRUN --mount=type=bind,from=$X,target=/x true\n",
    "FROM alpine\nRUN --mount=type=bind,from=x$ true\n",
    "FROM alpine AS 1st\n",
    "FROM alpine AS Build\nFROM build\n",
    "FROM ubuntu AS builder\nFROM Builder\n",
    "FROM Ubuntu\n",
    "FROM SCRATCH\n",
    "FROM scratch\nCOPY --from=SCRATCH a b\n",
    "FROM ubuntu@sha256:abc\n",
    "FROM ubuntu@sha256:" + "a" * 64 + "\n",
    "FROM base-$TARGETARCH AS base-amd64\nFROM base-${TARGETARCH}\n",
    "FROM --platform=$BUILDPLATFORM golang AS build\nFROM alpine\nCOPY --from=build / /\n",
    "FROM --platform linux/amd64 alpine\n",
    "FROM alpine\nCOPY --link --link a b\n",
    "FROM alpine\nCOPY --exclude=a --exclude=b a b\n",
    "FROM alpine\nCOPY --link=yes a b\n",
    "FROM alpine\nHEALTHCHECK --bogus NONE\n",
    "FROM alpine\nHEALTHCHECK --bogus=1 CMD true\n",
    "FROM alpine\nARG --whatever X\nSTOPSIGNAL --x 9\n",
    "FROM alpine\nCMD --x y\n",
    "RUN x\nFROM alpine\n",
    "ARG V=3.12\nFROM python:${V}-slim AS a\nFROM golang AS b\nFROM a\nCOPY --from=b / /\n",
    "FROM golang AS unused\nFROM node AS used\nFROM alpine\nCOPY --from=used / /\n",
    "FROM alpine AS first\nCOPY --from=tools /t /t\nFROM busybox AS tools\n",
    "FROM a\nFROM b\nCOPY --from=2 / /\n",
    "FROM a\nCOPY --from=registry.example.com:5000/team/tool:2.1 / /\n",
    "FROM a\nCOPY --from=Registry.Example.com/team/tool / /\n",
    "FROM a\nCOPY --from=team/Tool / /\n",
    "FROM img:${TARGETSTAGE} AS one\nFROM img:$TARGETSTAGE AS two\n",
    "ARG X=\nFROM ${X}\n",
]


@pytest.mark.parametrize("text", HAND_WRITTEN)
def test_hand_written_dockerfiles_plan_as_buildkit(text: str) -> None:
    assert_agree(text)


@pytest.mark.parametrize(
    ("text", "target", "args"),
    [
        ("FROM a AS x\nFROM b AS y\n", "x", {}),
        ("FROM a AS x\nFROM b AS y\n", "X", {}),
        ("FROM a AS x\nFROM b AS y\n", "z", {}),
        ("FROM a\n", "a", {}),
        ("ARG T=1\nFROM img:$T\n", None, {"T": "2"}),
        ("FROM img:$T\n", None, {"T": "2"}),
        ("ARG T\nFROM img:$T\n", None, {"T": "UPPER"}),
        ("FROM base-$TARGETARCH\n", None, {"TARGETARCH": "arm64"}),
        ("FROM img:${TARGETSTAGE} AS one\nFROM img:$TARGETSTAGE AS two\n", "one", {}),
    ],
)
def test_targets_and_build_args_resolve_as_buildkit(
    text: str, target: str | None, args: dict[str, str]
) -> None:
    assert_agree(text, target, args)


# Lines that BuildKit refuses, or that stress what it resolves, mixed into generated files.
MUTATIONS = (
    "RUNN echo hi",
    "COPY --frm=x a b",
    "COPY --from=$BASE a b",
    "RUN --mount=from=${TAG},target=/t true",
    "FROM Base",
    "FROM build",
    "FROM deps AS 9lives",
    "FROM base-$TARGETARCH",
    "COPY --from=Deps a b",
    "COPY --from=UPPER/case a b",
    "COPY --link=maybe a b",
    "EXPOSE --x 80",
    "HEALTHCHECK --retries=3 CMD true",
)


@st.composite
def planning_cases(draw: st.DrawFn) -> tuple[str, str | None, dict[str, str]]:
    text = draw(dockerfiles())
    newline = "\r\n" if "\r\n" in text else "\n"
    lines = text.split(newline)[:-1]
    for mutation in draw(st.lists(st.sampled_from(MUTATIONS), max_size=1)):
        lines.insert(draw(st.integers(min_value=0, max_value=len(lines))), mutation)
    names = re.findall(r" (?:AS|as) ([a-z][\w.-]*)", text)
    target = draw(st.sampled_from([None, None, *names, "missing", *(n.upper() for n in names)]))
    args = draw(
        st.dictionaries(
            st.sampled_from(("PY", "BASE", "TAG", "VARIANT", "TARGETARCH", "OTHER")),
            st.sampled_from(("3.12", "ubuntu", "x", "")),
            max_size=2,
        )
    )
    return newline.join(lines) + newline, target, args


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(planning_cases())
def test_generated_dockerfiles_plan_as_buildkit(
    case: tuple[str, str | None, dict[str, str]],
) -> None:
    assert_agree(*case)
