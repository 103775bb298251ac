"""Literal COPY/ADD sources checked against the build context while planning.

BuildKit fails a build whose ``COPY``/``ADD`` names a file the context does not hold (after
``.dockerignore``), but only when it reaches that step, minutes in. kiln checks the literal
sources of the stages the target reaches before any request. Wildcards are allowed to match
nothing (BuildKit allows it), and a source with a variable, a URL, a heredoc, or ``--from`` is
not a context path, so it is left to the builder.
"""

from __future__ import annotations

import os
import posixpath

from kiln.errors import DockerfileError
from kiln.plan.dockerfile import Instruction
from kiln.plan.dockerignore import PatternMatcher, read_dockerignore
from kiln.plan.stages import Stages

_COPY_KEYWORDS = frozenset({"COPY", "ADD"})
# A source with any of these is a pattern or needs expansion: not a literal path.
_NOT_LITERAL = frozenset("*?[\\$")
_URL_MARKERS = ("://", "git@")
_HEREDOC = "<<"


def check_context_sources(
    stages: Stages, context_dir: str, dockerfile: str | os.PathLike[str] | None
) -> None:
    """Raise DockerfileError naming the line and path of the first missing literal source."""
    if not os.path.isdir(context_dir):
        return  # the caller reports a missing context as such
    matcher = PatternMatcher(read_dockerignore(context_dir, dockerfile=dockerfile))
    for stage in stages.reachable():
        for instruction in stage.instructions:
            if instruction.keyword in _COPY_KEYWORDS and not _has_from(instruction):
                for source in _literal_sources(instruction):
                    _check(instruction, source, context_dir, matcher)


def _has_from(instruction: Instruction) -> bool:
    return any(flag.startswith("--from=") for flag in instruction.flags)


def _literal_sources(instruction: Instruction) -> list[str]:
    words = list(instruction.json_args or instruction.words)
    sources = words[:-1]
    return [
        source
        for source in sources
        if not any(ch in _NOT_LITERAL for ch in source)
        and not source.startswith(_HEREDOC)
        and not (instruction.keyword == "ADD" and any(m in source for m in _URL_MARKERS))
    ]


def _check(
    instruction: Instruction, source: str, context_dir: str, matcher: PatternMatcher
) -> None:
    # Sources are relative to the context root, and `..` cannot climb above it.
    rel = posixpath.normpath("/" + source).lstrip("/")
    if rel in ("", "."):
        return
    path = os.path.join(context_dir, rel)
    if not os.path.lexists(path):
        raise DockerfileError(
            instruction.line,
            f'{instruction.keyword} source "{source}": not found in the build context '
            f"{context_dir}",
            hint="sources are relative to the build context (not to the Dockerfile); fix the "
            "path or pass the right context directory",
        )
    excluded = matcher.matches(rel)
    if excluded and not (os.path.isdir(path) and matcher.may_include_beneath(rel)):
        raise DockerfileError(
            instruction.line,
            f'{instruction.keyword} source "{source}": excluded from the build context by '
            ".dockerignore",
            hint=f"remove the .dockerignore pattern that excludes {rel}, or add !{rel}",
        )
