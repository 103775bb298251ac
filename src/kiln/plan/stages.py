"""A Dockerfile's stages resolved as BuildKit's dockerfile2llb resolves them.

BuildKit (``dockerfile2llb/convert.go``) expands each ``FROM`` with the global build arguments
(its automatic platform arguments, then the ``ARG``s before the first ``FROM`` with
``--build-arg`` values winning), links a stage to an *earlier* stage whose name equals the
expanded base exactly, resolves ``COPY --from`` and ``RUN --mount from=`` against every stage's
name case-insensitively (or a stage index), picks the target (``--target`` or the last stage) and
builds only the stages it reaches. Everything it refuses on the way is refused here, in its
words, before any request: variables in ``--from``, an invalid base reference, an unknown target.

kiln differs in one documented way (the reference's): a variable with no value leaves the
reference literal and *unresolvable* (the builder pulls it) instead of expanding to nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence

import attrs

from kiln.errors import DockerfileError, PlanError, UsageError
from kiln.plan.dockerfile import Instruction, parse_dockerfile, quoted_words
from kiln.plan.instructions import check_instruction, did_you_mean
from kiln.plan.reference import reference_problem

SCRATCH = "scratch"
BUILD_ARG_EXPANSION = "build_arg_expansion"
DIGEST_PIN = "digest_pin"
# Tensorlake's builders are linux/amd64; BuildKit's automatic platform arguments say so.
BUILDER_OS = "linux"
BUILDER_ARCH = "amd64"
BUILDER_PLATFORM = f"{BUILDER_OS}/{BUILDER_ARCH}"
DEFAULT_TARGET_STAGE = "default"
# Docker's rule for `FROM ... AS <name>` (checked after lower-casing, as Docker does).
_STAGE_NAME = re.compile(r"[a-z][a-z0-9\-_.]*")
_STAGE_INDEX = re.compile(r"[+-]?[0-9]+")
_VARIABLE = re.compile(r"\$(?:([A-Za-z_][A-Za-z0-9_]*)|\{([^}]*)\})")
_BRACED = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-+])(.*))?", re.DOTALL)
# What BuildKit's shell lexer would change in a word: a `$` starting an expansion, quotes, escapes.
_EXPANDABLE = re.compile(r"\$[{A-Za-z0-9_@*#?$!-]|['\"]")
FROM_VARIABLE_ERROR = (
    "variable expansion is not supported for --from, define a new stage with FROM using ARG "
    "from global scope as a workaround"
)
MOUNT_VARIABLE_ERROR = "'from' doesn't support variable expansion, define alias stage instead"
_NO_STAGE_ERROR = "no build stage in current context"


@attrs.frozen
class UnresolvableReference:
    """An image reference kiln cannot map to a template; the builder pulls it instead."""

    line: int = attrs.field(validator=attrs.validators.ge(1))
    reference: str
    reason: str = attrs.field(validator=attrs.validators.in_((BUILD_ARG_EXPANSION, DIGEST_PIN)))


@attrs.frozen
class Stage:
    """One ``FROM`` and the instructions up to the next one."""

    index: int
    line: int  # the FROM's line
    from_end_line: int  # its last line (a FROM may be continued)
    image: str  # the base, expanded when it resolves, else as written
    name: str | None  # lower-cased, as BuildKit keeps stage names
    base_stage: int | None  # the earlier stage this one builds on
    unresolvable: UnresolvableReference | None
    instructions: tuple[Instruction, ...]
    stage_deps: tuple[int, ...] = ()  # stages it copies or mounts from
    side_images: tuple[str, ...] = ()  # images it copies or mounts from
    side_unresolvable: tuple[UnresolvableReference, ...] = ()

    @property
    def is_image(self) -> bool:
        """A base the builder looks up: not a stage, not scratch, resolvable."""
        return self.base_stage is None and self.unresolvable is None and self.image != SCRATCH


@attrs.frozen
class Stages:
    """The resolved stages, the meta ARGs before them, and the target."""

    stages: tuple[Stage, ...]
    meta: tuple[Instruction, ...]
    target_index: int
    escape: str

    @property
    def target(self) -> Stage:
        return self.stages[self.target_index]

    def reachable(self) -> Iterator[Stage]:
        """The stages the target needs (itself included), in file order."""
        seen: set[int] = set()
        pending = [self.target_index]
        while pending:
            index = pending.pop()
            if index in seen:
                continue
            seen.add(index)
            stage = self.stages[index]
            pending += [
                *stage.stage_deps,
                *([stage.base_stage] if stage.base_stage is not None else []),
            ]
        return (stage for stage in self.stages if stage.index in seen)


def automatic_args(target_stage: str) -> dict[str, str]:
    """BuildKit's automatic platform arguments (``defaultArgs``) on a linux/amd64 builder."""
    return {
        "BUILDPLATFORM": BUILDER_PLATFORM,
        "BUILDOS": BUILDER_OS,
        "BUILDOSVERSION": "",
        "BUILDARCH": BUILDER_ARCH,
        "BUILDVARIANT": "",
        "TARGETPLATFORM": BUILDER_PLATFORM,
        "TARGETOS": BUILDER_OS,
        "TARGETOSVERSION": "",
        "TARGETARCH": BUILDER_ARCH,
        "TARGETVARIANT": "",
        "TARGETSTAGE": target_stage,
    }


def resolve_stages(text: str, build_args: Mapping[str, str], target: str | None) -> Stages:
    """Parse, check and resolve `text`; DockerfileError/PlanError where BuildKit fails."""
    dockerfile = parse_dockerfile(text)
    meta, groups = _split(dockerfile.instructions)
    froms = [group[0] for group in groups]
    names = [_stage_name(instruction) for instruction in froms]
    target_index = _target_index(target, names)
    target_stage = target or names[-1] or DEFAULT_TARGET_STAGE
    args = _meta_args(meta, automatic_args(target_stage), build_args)
    stages: list[Stage] = []
    for index, group in enumerate(groups):
        stages.append(_stage(index, group, names[index], args, stages))
    resolved = [_with_side_references(stage, names, dockerfile.escape) for stage in stages]
    return Stages(tuple(resolved), tuple(meta), target_index, dockerfile.escape)


def _split(
    instructions: Sequence[Instruction],
) -> tuple[list[Instruction], list[list[Instruction]]]:
    """The meta ARGs before the first FROM, and each stage's instructions (FROM first)."""
    meta: list[Instruction] = []
    groups: list[list[Instruction]] = []
    for instruction in instructions:
        check_instruction(instruction)
        if instruction.keyword == "FROM":
            groups.append([instruction])
        elif groups:
            groups[-1].append(instruction)
        elif instruction.keyword == "ARG":
            meta.append(instruction)
        else:
            raise DockerfileError(
                instruction.line,
                _NO_STAGE_ERROR,
                hint=f"only ARG may come before the first FROM; move this {instruction.keyword}",
            )
    if not groups:
        raise PlanError(
            "Dockerfile must contain a FROM instruction",
            hint="start the Dockerfile with FROM <image>, e.g. FROM ubuntu:24.04",
        )
    return meta, groups


def _target_index(target: str | None, names: Sequence[str | None]) -> int:
    if target is None:
        return len(names) - 1
    for index, name in enumerate(names):
        if name is not None and name == target.lower():
            return index
    known = [name for name in names if name]
    message = f"target stage {json.dumps(target)} could not be found"
    raise UsageError(
        message + did_you_mean(target, known, case_sensitive=True),
        hint=f"stages of this Dockerfile: {', '.join(known)}"
        if known
        else "name a stage with FROM <image> AS <name> to build it with --target",
    )


def _meta_args(
    meta: Sequence[Instruction], automatic: Mapping[str, str], build_args: Mapping[str, str]
) -> dict[str, str | None]:
    """BuildKit's global scope: its automatic arguments (a --build-arg may override them), then
    ``buildMetaArgs``: each ARG before the first FROM, a --build-arg winning over its default.
    A build argument no ARG declares is not in scope. None: declared without a value."""
    values: dict[str, str | None] = {k: build_args.get(k, v) for k, v in automatic.items()}
    for instruction in meta:
        for key, default in arg_declarations(instruction):
            if key in build_args:
                values[key] = build_args[key]
            elif default is not None:
                values[key] = expand(default, values)
            else:
                values[key] = values.get(key)
    return values


def arg_declarations(instruction: Instruction) -> list[tuple[str, str | None]]:
    """The (key, default) pairs of an ARG instruction, defaults unquoted."""
    pairs: list[tuple[str, str | None]] = []
    for word in quoted_words(instruction.args):
        key, eq, default = word.partition("=")
        pairs.append((key, _unquote(default) if eq else None))
    return pairs


def _unquote(word: str) -> str:
    if len(word) >= 2 and word[0] == word[-1] and word[0] in "'\"":
        return word[1:-1]
    return word


def _stage_name(instruction: Instruction) -> str | None:
    words = list(instruction.words)
    line = instruction.line
    if not words:
        raise DockerfileError(
            line, "FROM must include a base image", hint="write FROM <image>, e.g. FROM ubuntu"
        )
    if len(words) == 1:
        return None
    if words[1].lower() != "as" or len(words) > 3:
        raise DockerfileError(
            line,
            "unsupported FROM syntax",
            hint="write FROM <image> or FROM <image> AS <stage-name>",
        )
    if len(words) == 2:
        raise DockerfileError(
            line, "FROM ... AS must include a stage name", hint="write FROM <image> AS <name>"
        )
    name = words[2].lower()
    if not _STAGE_NAME.fullmatch(name):
        raise DockerfileError(
            line,
            f"invalid name for build stage: {json.dumps(words[2])}, name can't start with a "
            "number or contain symbols",
            hint="use letters, digits, '-', '_' and '.', starting with a letter",
        )
    return name


def _stage(
    index: int,
    group: Sequence[Instruction],
    name: str | None,
    args: Mapping[str, str | None],
    earlier: Sequence[Stage],
) -> Stage:
    instruction = group[0]
    line = instruction.line
    written = instruction.words[0]
    expanded = expand(written, args)
    if expanded == "":
        raise DockerfileError(
            line,
            f"base name ({written}) should not be blank",
            hint="give the build argument a non-empty value (a default, or --build-arg)",
        )
    unresolvable = _classify(line, written, expanded)
    image = expanded if expanded is not None and unresolvable is None else written
    base_stage = None
    if unresolvable is None:
        base_stage = next(
            (s.index for s in earlier if s.name is not None and s.name == image), None
        )
    if base_stage is None and expanded is not None and "$" not in expanded:
        _check_reference(line, expanded)
    return Stage(
        index=index,
        line=line,
        from_end_line=instruction.end_line,
        image=image,
        name=name,
        base_stage=base_stage,
        unresolvable=None if base_stage is not None else unresolvable,
        instructions=tuple(group[1:]),
    )


def _check_reference(line: int, image: str) -> None:
    if image == SCRATCH:
        return
    problem = reference_problem(image)
    if problem is not None:
        raise DockerfileError(
            line,
            f"failed to parse stage name {json.dumps(image)}: {problem}",
            hint="name an image as registry/repository:tag (lower case), or an earlier stage",
        )


def _classify(line: int, written: str, expanded: str | None) -> UnresolvableReference | None:
    if expanded is None or "$" in expanded:
        return UnresolvableReference(line, written, BUILD_ARG_EXPANSION)
    if "@" in expanded:
        return UnresolvableReference(line, expanded, DIGEST_PIN)
    return None


def _with_side_references(stage: Stage, names: Sequence[str | None], escape: str) -> Stage:
    """Resolve the stage's ``COPY --from`` and ``RUN --mount from=`` against all stages."""
    deps: list[int] = []
    images: list[str] = []
    unresolvable: list[UnresolvableReference] = []
    for instruction in stage.instructions:
        for value, is_copy in _side_values(instruction):
            index = _side_stage(instruction, value, is_copy, names)
            if index is not None:
                deps.append(index)
            elif value != SCRATCH:
                _check_reference(instruction.line, value)
                pinned = _classify(instruction.line, value, value)
                if pinned is not None:
                    unresolvable.append(pinned)
                else:
                    images.append(value)
    return attrs.evolve(
        stage,
        stage_deps=tuple(deps),
        side_images=tuple(dict.fromkeys(images)),
        side_unresolvable=tuple(unresolvable),
    )


def _side_stage(
    instruction: Instruction, value: str, is_copy: bool, names: Sequence[str | None]
) -> int | None:
    """The stage `value` names, or None for an image."""
    if is_copy and _STAGE_INDEX.fullmatch(value):
        index = int(value)
        if not 0 <= index < len(names):
            raise DockerfileError(
                instruction.line,
                f"invalid stage index {index}",
                hint=f"COPY --from=<n> counts stages from 0; this Dockerfile has {len(names)}",
            )
        return index
    lowered = value.lower()
    return next((i for i, name in enumerate(names) if name == lowered), None)


def _side_values(instruction: Instruction) -> Iterator[tuple[str, bool]]:
    """`COPY --from` (True), then the `from=` of every `RUN --mount` (False), checked."""
    for flag in instruction.flags:
        if flag == "--":
            return
        name, _, value = flag.partition("=")
        if instruction.keyword == "COPY" and name == "--from" and value:
            if _EXPANDABLE.search(value):
                raise DockerfileError(
                    instruction.line,
                    FROM_VARIABLE_ERROR,
                    hint="name a stage: FROM ${IMAGE} AS src, then COPY --from=src",
                )
            yield value, True
        elif instruction.keyword == "RUN" and name == "--mount":
            yield from ((v, False) for v in _mount_from(instruction, value))


def _mount_from(instruction: Instruction, body: str) -> Iterator[str]:
    for part in body.split(","):
        key, eq, value = part.partition("=")
        if key.strip().lower() != "from" or not eq:
            continue
        dollar = value.find("$")
        if dollar != -1 and dollar != len(value) - 1:
            raise DockerfileError(
                instruction.line,
                MOUNT_VARIABLE_ERROR,
                hint="name a stage: FROM ${IMAGE} AS src, then --mount=from=src",
            )
        if value:
            yield value


def expand(word: str, args: Mapping[str, str | None]) -> str | None:
    """Substitute build arguments like Docker's shell lexer; None when one has no value."""
    unresolved = False

    def substitute(match: re.Match[str]) -> str:
        nonlocal unresolved
        value = _variable_value(match, args)
        if value is None:
            unresolved = True
            return match.group(0)
        return value

    result = _VARIABLE.sub(substitute, word)
    return None if unresolved else result


def _variable_value(match: re.Match[str], args: Mapping[str, str | None]) -> str | None:
    if match.group(1) is not None:
        return args.get(match.group(1))
    braced = _BRACED.fullmatch(match.group(2))
    if braced is None:
        return None
    name, operator, word = braced.groups()
    value = args.get(name)
    if operator is None:
        return value
    is_set = value is not None and (value != "" or not operator.startswith(":"))
    if operator.endswith("-"):
        return value if is_set else expand(word, args)
    return expand(word, args) if is_set else ""
