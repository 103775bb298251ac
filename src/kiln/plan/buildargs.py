"""``--build-arg``, ``--target`` and ``--platform`` applied as ``docker build`` applies them.

The platform's legacy build path takes no build arguments (the official client refuses them
without its CAS path), so kiln applies them itself, in the Dockerfile it sends:

- every ``ARG`` that declares an overridden key (before the first FROM or in a stage) is
  rewritten to declare it with the given value, single-quoted so the builder takes it literally,
  as Docker takes a ``--build-arg`` value. The rewritten instruction keeps its line number
  (continuation lines become blank), so the builder's errors still point at the user's lines;
- Docker's predefined arguments (``HTTP_PROXY`` and friends) need no ``ARG``: when the
  Dockerfile declares none, each stage sent gets one after its FROM, so RUN sees them as in
  Docker (and, as in Docker, they stay out of the image's config);
- a build argument nothing declares gives Docker's warning, "One or more build-args [...] were
  not consumed";
- with ``--target``, the stages after the target are not sent. Should the target copy from a
  stage defined after it (BuildKit allows that), the file is kept up to that stage and a last
  ``FROM <target>`` makes the target the image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from kiln.errors import UsageError
from kiln.plan.dockerfile import Instruction, quoted_words
from kiln.plan.stages import BUILDER_PLATFORM, Stage, Stages, arg_declarations

# Docker's builtinAllowedBuildArgs: usable with --build-arg without an ARG, never warned about.
PREDEFINED_ARGS = (
    *("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy"),
    *("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"),
)
# containerd's spellings of the one platform Tensorlake builders run.
_BUILDER_OS = frozenset({"linux"})
_AMD64 = frozenset({"amd64", "x86_64", "x86-64"})
_AMD64_VARIANTS = frozenset({"", "v1"})
_QUOTE = "'"
_QUOTED_QUOTE = "'\"'\"'"


def check_platform(platform: str | None) -> None:
    """Accept linux/amd64 in the spellings Docker accepts (``amd64``, ``linux/x86_64``, ...)."""
    if platform is None or _is_builder_platform(platform):
        return
    raise UsageError(
        f"unsupported platform {platform!r}: Tensorlake builders are {BUILDER_PLATFORM}, "
        "and kiln builds for that platform only",
        hint=f"omit --platform, or pass --platform {BUILDER_PLATFORM}",
    )


def _is_builder_platform(platform: str) -> bool:
    parts = platform.strip().lower().split("/")
    if len(parts) == 1:
        return parts[0] in _AMD64
    if len(parts) > 3 or parts[0] not in _BUILDER_OS or parts[1] not in _AMD64:
        return False
    return len(parts) == 2 or parts[2] in _AMD64_VARIANTS


def parse_build_arg(text: str, environ: Mapping[str, str]) -> tuple[str, str] | None:
    """``KEY=VALUE``, or ``KEY`` taking the value from the environment (None when unset, as
    Docker then leaves the argument out)."""
    key, eq, value = text.partition("=")
    if not key:
        raise UsageError(
            f"invalid build argument {text!r}: the name is empty",
            hint="write --build-arg KEY=VALUE, or --build-arg KEY to take KEY from the environment",
        )
    if eq:
        return key, value
    return (key, environ[key]) if key in environ else None


@attrs.frozen
class SentDockerfile:
    text: str
    warnings: tuple[str, ...] = ()


def dockerfile_to_send(text: str, stages: Stages, build_args: Mapping[str, str]) -> SentDockerfile:
    """The Dockerfile as the builder must get it, and the warnings Docker would print."""
    last = max(stage.index for stage in stages.reachable())
    sent_stages = stages.stages[: last + 1]
    arg_instructions = [
        *stages.meta,
        *(i for s in sent_stages for i in s.instructions if i.keyword == "ARG"),
    ]
    declared = {key for i in arg_instructions for key, _ in arg_declarations(i)}
    if not build_args and last == len(stages.stages) - 1:
        return SentDockerfile(text)
    lines = _lines(text)
    if last + 1 < len(stages.stages):
        del lines[stages.stages[last + 1].line - 1 :]
    for instruction in arg_instructions:
        _rewrite_arg(lines, instruction, build_args, stages.escape)
    predefined = {k: v for k, v in build_args.items() if k in PREDEFINED_ARGS and k not in declared}
    if predefined:
        _declare_after_each_from(lines, sent_stages, predefined)
    if last != stages.target_index:
        _end_with_target(lines, stages)
    unused = sorted(set(build_args) - declared - set(PREDEFINED_ARGS))
    warnings = (f"One or more build-args [{' '.join(unused)}] were not consumed",) if unused else ()
    return SentDockerfile("".join(lines), warnings)


def _lines(text: str) -> list[str]:
    pieces = text.split("\n")
    return [piece + "\n" for piece in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])


def _quoted(key: str, value: str) -> str:
    if "\n" in value or "\r" in value:
        raise UsageError(
            f"build argument {key} holds a line break, which kiln cannot write into an ARG",
            hint="pass the value without line breaks",
        )
    return _QUOTE + value.replace(_QUOTE, _QUOTED_QUOTE) + _QUOTE


def _rewrite_arg(
    lines: list[str], instruction: Instruction, build_args: Mapping[str, str], escape: str
) -> None:
    words = quoted_words(instruction.args, escape)
    if not any(word.partition("=")[0] in build_args for word in words):
        return
    rewritten = [
        f"{key}={_quoted(key, build_args[key])}" if key in build_args else word
        for word in words
        for key in (word.partition("=")[0],)
    ]
    first, last = instruction.line - 1, instruction.end_line - 1
    ending = "\r\n" if lines[last].endswith("\r\n") else "\n"
    keyword = instruction.original.split(None, 1)[0]
    # Continuation lines become blank lines, so every later line keeps its number.
    lines[first : last + 1] = [f"{keyword} {' '.join(rewritten)}{ending}"] + [ending] * (
        last - first
    )


def _declare_after_each_from(
    lines: list[str], stages: Sequence[Stage], values: Mapping[str, str]
) -> None:
    declaration = "ARG " + " ".join(f"{k}={_quoted(k, v)}" for k, v in values.items()) + "\n"
    for stage in reversed(stages):
        if not lines[stage.from_end_line - 1].endswith("\n"):
            lines[stage.from_end_line - 1] += "\n"
        lines.insert(stage.from_end_line, declaration)


def _end_with_target(lines: list[str], stages: Stages) -> None:
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    lines.append(f"FROM {stages.target.name}\n")
