"""Build planning: from a Dockerfile (or an image reference) to a :class:`BuildPlan`.

Planning is pure and local. It finds the final base image, the other images the builder must
have locally (earlier stages' bases, ``COPY --from=<image>``, ``RUN --mount=...,from=<image>``),
the references it cannot resolve, and the instructions that have no effect on a sandbox.

Where kiln follows Docker, not the reference
--------------------------------------------
The reference (§5.1, §8) describes the Rust client's own line splitter and lookups. Users'
Dockerfiles are written for ``docker build``, so where the two differ kiln does what Docker does:

- **Instruction boundaries** come from a BuildKit-compatible parser (:mod:`kiln.plan.dockerfile`):
  a comment or blank line inside a ``\\`` continuation does not end the instruction; heredoc
  bodies are never instructions; ``# escape=`` is honoured; flags are split off as BuildKit does.
  Continued lines are joined as BuildKit joins them (the escape character and newline removed,
  spacing kept), so ``RUN echo one \\`` + ``  && echo two`` is ``RUN echo one   && echo two``.
- **Numeric ``COPY --from=<n>``** names stage *n* (an internal stage), not an image called
  ``0``; an index past the last stage is an error, as in Docker. ``RUN --mount=...,from=``
  takes stage names only, as in BuildKit.
- **Stage names** match ``--from`` case-insensitively and may name any stage of the file, as in
  BuildKit; ``FROM <stage>`` matches an earlier stage's name exactly (BuildKit keeps stage names
  lower-cased and compares the base name as written).
- **``scratch``** is never an image to look up, wherever it appears. A final ``FROM scratch``
  leaves ``base_image`` as ``scratch``: the build must treat it as "no base", not a template.
- **Global ``ARG`` defaults** (declared before the first ``FROM``) are substituted into ``FROM``
  and ``--from`` references for planning. A variable with no default leaves the reference
  literal and unresolvable (``build_arg_expansion``). The Dockerfile text is sent verbatim.
- **FROM syntax** is Docker's: one or three words (``image AS name``), stage names matching
  ``[a-z][a-z0-9-_.]*``; ``--platform value`` (space-separated) is accepted like ``--platform=``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import attrs

from kiln.errors import DockerfileError, PlanError, UsageError
from kiln.plan.dockerfile import Instruction, parse_dockerfile, split_words
from kiln.plan.naming import default_name_for_dockerfile, default_name_for_image

DEFAULT_DOCKERFILE = "Dockerfile"
SCRATCH = "scratch"
BUILD_ARG_EXPANSION = "build_arg_expansion"
DIGEST_PIN = "digest_pin"
# Instructions the builder applies but that change nothing about a running sandbox.
IGNORED_KEYWORDS = frozenset(
    {"ONBUILD", "SHELL", "EXPOSE", "HEALTHCHECK", "LABEL", "STOPSIGNAL", "VOLUME"}
)
# Docker's rule for `FROM ... AS <name>` (checked after lower-casing, as Docker does).
_STAGE_NAME = re.compile(r"[a-z][a-z0-9\-_.]*")
_STAGE_INDEX = re.compile(r"[+-]?[0-9]+")
# Flags that take a value, so that `--name value` (space-separated) can claim the next word.
VALUE_FLAGS = frozenset(
    {"platform", "from", "chown", "chmod", "exclude", "checksum", "mount", "network", "security"}
)
_VARIABLE = re.compile(r"\$(?:([A-Za-z_][A-Za-z0-9_]*)|\{([^}]*)\})")
_BRACED = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-+])(.*))?", re.DOTALL)

_REASON_TEXT = {
    BUILD_ARG_EXPANSION: "uses a build argument without a default, which kiln cannot resolve "
    "while planning",
    DIGEST_PIN: "is pinned to a digest, which no locally loaded template image can match",
}


@attrs.frozen
class UnresolvableReference:
    """An image reference kiln cannot map to a template; the builder pulls it instead."""

    line: int = attrs.field(validator=attrs.validators.ge(1))
    reference: str
    reason: str = attrs.field(validator=attrs.validators.in_((BUILD_ARG_EXPANSION, DIGEST_PIN)))


@attrs.frozen
class IgnoredInstruction:
    """An instruction that is applied during the build but has no effect on sandboxes."""

    line: int = attrs.field(validator=attrs.validators.ge(1))
    keyword: str = attrs.field(validator=attrs.validators.in_(IGNORED_KEYWORDS))


@attrs.frozen
class BuildPlan:
    """Everything decided locally before any remote call."""

    name: str
    dockerfile_text: str
    dockerfile_path: str | None
    context_dir: str | None
    base_image: str
    base_image_is_internal_stage: bool
    additional_image_references: tuple[str, ...] = ()
    unresolvable_image_references: tuple[UnresolvableReference, ...] = ()
    ignored_instructions: tuple[IgnoredInstruction, ...] = ()
    import_image_reference: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def is_import(self) -> bool:
        return self.import_image_reference is not None


def plan_import(reference: str, *, name: str | None = None) -> BuildPlan:
    """Plan importing a registry image as it is: a one-line Dockerfile, no context."""
    reference = reference.strip()
    if not reference:
        raise UsageError(
            "image reference to import must not be empty",
            hint="pass a reference such as ubuntu:24.04",
        )
    return BuildPlan(
        name=_checked_name(name) if name is not None else default_name_for_image(reference),
        dockerfile_text=f"FROM {reference}\n",
        dockerfile_path=None,
        context_dir=None,
        base_image=reference,
        base_image_is_internal_stage=False,
        import_image_reference=reference,
    )


def plan_dockerfile(
    path: str | os.PathLike[str] | None = None,
    *,
    text: str | None = None,
    context: str | os.PathLike[str] | None = None,
    name: str | None = None,
) -> BuildPlan:
    """Plan a Dockerfile build from a file, or from `text` (then the file need not exist).

    The context defaults to the Dockerfile's directory (the current directory for bare text).
    """
    dockerfile_path = os.path.abspath(path) if path is not None else None
    if text is None:
        dockerfile_path = dockerfile_path or os.path.abspath(DEFAULT_DOCKERFILE)
        text = _read_dockerfile(dockerfile_path)
    context_dir = _context_dir(context, dockerfile_path)
    name_source = dockerfile_path or os.path.join(context_dir, DEFAULT_DOCKERFILE)
    analysis = _analyse(text)
    return BuildPlan(
        name=_checked_name(name) if name is not None else default_name_for_dockerfile(name_source),
        dockerfile_text=text,
        dockerfile_path=dockerfile_path,
        context_dir=context_dir,
        base_image=analysis.base_image,
        base_image_is_internal_stage=analysis.base_is_stage,
        additional_image_references=analysis.additional,
        unresolvable_image_references=analysis.unresolvable,
        ignored_instructions=analysis.ignored,
        warnings=_warnings(analysis.ignored, analysis.unresolvable),
    )


def _checked_name(name: str) -> str:
    if not name.strip():
        raise UsageError("image name must not be empty", hint="pass --name NAME, or omit it")
    return name


def _read_dockerfile(path: str) -> str:
    if not os.path.isfile(path):
        raise PlanError(
            f"Dockerfile not found: {path}",
            hint="pass the path to a Dockerfile, or run kiln where ./Dockerfile exists",
        )
    try:
        return Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise PlanError(
            f"Dockerfile is not UTF-8 text: {path} (byte {error.start})",
            hint="save the Dockerfile as UTF-8",
        ) from None
    except OSError as error:
        raise PlanError(f"cannot read Dockerfile {path}: {error.strerror}") from None


def _context_dir(context: str | os.PathLike[str] | None, dockerfile_path: str | None) -> str:
    if context is not None:
        return os.path.abspath(context)
    if dockerfile_path is not None:
        return os.path.dirname(dockerfile_path)
    return os.getcwd()


def _warnings(
    ignored: Iterable[IgnoredInstruction], unresolvable: Iterable[UnresolvableReference]
) -> tuple[str, ...]:
    lines = [
        f"line {item.line}: Dockerfile instruction '{item.keyword}' is applied during the image "
        "build but has no effect when running sandboxes from this image."
        for item in ignored
    ]
    lines += [
        f"line {item.line}: image reference '{item.reference}' {_REASON_TEXT[item.reason]}. "
        "The build will pull it from its registry instead of using a Tensorlake template, so "
        "the image may be larger than a diff against a template."
        for item in unresolvable
    ]
    return tuple(lines)


@attrs.frozen
class _Stage:
    line: int
    image: str  # substituted when resolvable, else as written
    alias: str | None  # lower-cased, as Docker stores stage names
    is_stage_reference: bool
    unresolvable: UnresolvableReference | None


@attrs.frozen
class _Analysis:
    base_image: str
    base_is_stage: bool
    additional: tuple[str, ...]
    unresolvable: tuple[UnresolvableReference, ...]
    ignored: tuple[IgnoredInstruction, ...]


@attrs.define
class _References:
    """Additional image references in first-seen order, plus the unresolvable ones."""

    additional: list[str] = attrs.Factory(list)
    unresolvable: list[UnresolvableReference] = attrs.Factory(list)

    def add(self, reference: str) -> None:
        if reference not in self.additional:
            self.additional.append(reference)


def _analyse(text: str) -> _Analysis:
    instructions = parse_dockerfile(text).instructions
    global_args = _global_args(instructions)
    stages = _stages(instructions, global_args)
    if not stages:
        raise PlanError(
            "Dockerfile must contain a FROM instruction",
            hint="start the Dockerfile with FROM <image>, e.g. FROM ubuntu:24.04",
        )
    aliases = {stage.alias for stage in stages if stage.alias}
    refs = _References()
    ignored: list[IgnoredInstruction] = []
    stage_iter = iter(stages)
    previous: _Stage | None = None
    for instruction in instructions:
        if instruction.keyword == "FROM":
            current = next(stage_iter)
            _demote(previous, current, refs)
            if current.unresolvable:
                refs.unresolvable.append(current.unresolvable)
            previous = current
        elif instruction.keyword in ("COPY", "RUN"):
            for value in _side_references(instruction):
                _side_reference(instruction, value, global_args, aliases, len(stages), refs)
        elif instruction.keyword in IGNORED_KEYWORDS:
            ignored.append(IgnoredInstruction(instruction.line, instruction.keyword))
    final = stages[-1]
    return _Analysis(
        base_image=final.image,
        base_is_stage=final.is_stage_reference,
        additional=tuple(ref for ref in refs.additional if ref != final.image),
        unresolvable=tuple(refs.unresolvable),
        ignored=tuple(ignored),
    )


def _demote(previous: _Stage | None, current: _Stage, refs: _References) -> None:
    """An earlier stage's base image is still needed by the builder: keep it as additional."""
    if previous is None or previous.image == current.image:
        return
    if previous.is_stage_reference or previous.unresolvable:
        return
    if previous.image.lower() == SCRATCH:
        return
    refs.add(previous.image)


def _global_args(instructions: Iterable[Instruction]) -> dict[str, str | None]:
    """ARG defaults declared before the first FROM; None marks an ARG without a usable default."""
    args: dict[str, str | None] = {}
    for instruction in instructions:
        if instruction.keyword == "FROM":
            break
        if instruction.keyword != "ARG":
            continue
        for word in split_words(instruction.args) or ():
            key, eq, default = word.partition("=")
            args[key] = _expand(default, args) if eq else args.get(key)
    return args


def _stages(instructions: Iterable[Instruction], args: Mapping[str, str | None]) -> list[_Stage]:
    stages: list[_Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            stages.append(_stage(instruction, args, stages))
    return stages


def _stage(
    instruction: Instruction, args: Mapping[str, str | None], earlier: list[_Stage]
) -> _Stage:
    words = _from_words(instruction)
    line = instruction.line
    if not words:
        raise DockerfileError(
            line, "FROM must include a base image", hint="write FROM <image>, e.g. FROM ubuntu"
        )
    alias = _stage_alias(words, line)
    written = words[0]
    expanded = _expand(written, args)
    unresolvable = _classify(line, written, expanded)
    image = expanded if expanded is not None and unresolvable is None else written
    if expanded == "":
        raise DockerfileError(
            line,
            f"base name ({written}) should not be blank",
            hint="give the build argument a non-empty default",
        )
    is_stage = unresolvable is None and any(stage.alias == image for stage in earlier)
    return _Stage(line, image, alias, is_stage, None if is_stage else unresolvable)


def _from_words(instruction: Instruction) -> list[str]:
    """FROM's words after its flags."""
    return _flags_and_words(instruction)[1]


def _flags_and_words(instruction: Instruction) -> tuple[list[tuple[str, str]], list[str]]:
    """The instruction's flags as (name, value) pairs, and the words left after them.

    BuildKit's parser splits ``--name=value``; ``--name value`` (which the Rust client and newer
    BuildKit accept) leaves the value as the next word, so a value-taking flag claims it here.
    """
    flags = list(instruction.flags)
    words = list(instruction.words)
    pairs = []
    claimed = False  # BuildKit stops at a claimed value, so flags may follow it among the words
    while flags or (claimed and words and words[0].startswith("--") and words[0] != "--"):
        flag = flags.pop(0) if flags else words.pop(0)
        name, eq, value = flag.partition("=")
        claimed = not eq and name.removeprefix("--") in VALUE_FLAGS
        if claimed:
            if not words:
                raise DockerfileError(
                    instruction.line,
                    f"missing value for Dockerfile flag '{flag}'",
                    hint=f"write {flag}=<value>",
                )
            value = words.pop(0)
        pairs.append((name, value))
    return pairs, words


def _stage_alias(words: list[str], line: int) -> str | None:
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
    alias = words[2].lower()
    if not _STAGE_NAME.fullmatch(alias):
        raise DockerfileError(
            line,
            f"invalid name for build stage: {words[2]!r}, name can't start with a number or "
            "contain symbols",
            hint="use letters, digits, '-', '_' and '.', starting with a letter",
        )
    return alias


def _classify(line: int, written: str, expanded: str | None) -> UnresolvableReference | None:
    if expanded is None or "$" in expanded:
        return UnresolvableReference(line, written, BUILD_ARG_EXPANSION)
    if "@" in expanded:
        return UnresolvableReference(line, expanded, DIGEST_PIN)
    return None


def _side_references(instruction: Instruction) -> list[str]:
    """`COPY --from` values, or the `from=` of every `RUN --mount`."""
    flags = _flags_and_words(instruction)[0]
    if instruction.keyword == "COPY":
        return [value for name, value in flags if name == "--from" and value][:1]
    return [
        value
        for name, body in flags
        if name == "--mount"
        for key, _, value in (part.partition("=") for part in body.split(","))
        if key.strip().lower() == "from" and value
    ]


def _side_reference(
    instruction: Instruction,
    value: str,
    args: Mapping[str, str | None],
    aliases: set[str],
    stage_count: int,
    refs: _References,
) -> None:
    line = instruction.line
    expanded = _expand(value, args)
    if expanded is not None and expanded.lower() == SCRATCH:
        return
    if instruction.keyword == "COPY" and expanded and _STAGE_INDEX.fullmatch(expanded):
        _check_stage_index(int(expanded), stage_count, line)
        return
    unresolvable = _classify(line, value, expanded)
    if unresolvable is not None:
        refs.unresolvable.append(unresolvable)
    elif expanded and expanded.lower() not in aliases:
        refs.add(expanded)


def _check_stage_index(index: int, stage_count: int, line: int) -> None:
    if not 0 <= index < stage_count:
        raise DockerfileError(
            line,
            f"invalid stage index {index}",
            hint=f"COPY --from=<n> counts stages from 0; this Dockerfile has {stage_count}",
        )


def _expand(word: str, args: Mapping[str, str | None]) -> str | None:
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
        return value if is_set else _expand(word, args)
    return _expand(word, args) if is_set else ""
