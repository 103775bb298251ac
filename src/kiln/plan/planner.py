"""Build planning: from a Dockerfile (or an image reference) to a :class:`BuildPlan`.

Planning is pure and local. It finds the final base image, the other images the builder must
have locally (earlier stages' bases, ``COPY --from=<image>``, ``RUN --mount=...,from=<image>``),
the references it cannot resolve, and the instructions that have no effect on a sandbox.

Where kiln follows Docker, not the reference
--------------------------------------------
The official client has a line splitter and lookups of its own (docs/protocol.md#plan). Users'
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
- **Global ``ARG`` defaults** (declared before the first ``FROM``), ``--build-arg`` values and
  BuildKit's automatic platform arguments (``TARGETARCH``...) are substituted into ``FROM``
  (:mod:`kiln.plan.stages`); a variable with no value leaves the reference literal and
  unresolvable (``build_arg_expansion``). ``--from`` takes no variables, as in BuildKit.
- **What BuildKit refuses is refused** before any request, in its words: unknown instructions
  and flags (with "did you mean"), invalid stage names and base references, an unknown target.
- **Only the stages the target reaches** contribute images and warnings.
- **The Dockerfile sent** is the user's text, except for ``--build-arg``/``--target``
  (:mod:`kiln.plan.buildargs`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import attrs

from kiln.errors import PlanError, UsageError
from kiln.plan.buildargs import check_platform, dockerfile_to_send
from kiln.plan.naming import default_name_for_dockerfile, default_name_for_image
from kiln.plan.reference import reference_problem
from kiln.plan.sources import check_context_sources
from kiln.plan.stages import (
    BUILD_ARG_EXPANSION,
    DIGEST_PIN,
    SCRATCH,
    Stages,
    UnresolvableReference,
    resolve_stages,
)

DEFAULT_DOCKERFILE = "Dockerfile"
# Instructions the builder applies but that change nothing about a running sandbox.
IGNORED_KEYWORDS = frozenset(
    {"ONBUILD", "SHELL", "EXPOSE", "HEALTHCHECK", "LABEL", "STOPSIGNAL", "VOLUME"}
)
# A registered name travels as one URL path segment (`/sandbox-templates/by-name/{name}`).
MAX_NAME_LENGTH = 255
_NAME_FORBIDDEN = frozenset("/\\")

_REASON_TEXT = {
    BUILD_ARG_EXPANSION: "uses a build argument without a default, which kiln cannot resolve "
    "while planning",
    DIGEST_PIN: "is pinned to a digest, which no locally loaded template image can match",
}

__all__ = ["SCRATCH", "BuildPlan", "IgnoredInstruction", "UnresolvableReference"]


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
    problem = reference_problem(reference)
    if problem is not None:
        raise UsageError(
            f"invalid image reference {reference!r}: {problem}",
            hint="pass a reference such as ubuntu:24.04 or ghcr.io/org/app:v1 (lower case)",
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
    build_args: Mapping[str, str] | None = None,
    target: str | None = None,
    platform: str | None = None,
    check_sources: bool = False,
) -> BuildPlan:
    """Plan a Dockerfile build from a file, or from `text` (then the file need not exist).

    The context defaults to the Dockerfile's directory (the current directory for bare text).
    ``build_args`` and ``target`` are applied as ``docker build --build-arg/--target`` apply
    them, and the Dockerfile the plan sends carries them (see :mod:`kiln.plan.buildargs`).
    ``platform`` must be one the builders run (linux/amd64). ``check_sources`` refuses a
    literal COPY/ADD source that is not in the context after `.dockerignore`.
    """
    check_platform(platform)
    dockerfile_path = os.path.abspath(path) if path is not None else None
    if text is None:
        dockerfile_path = dockerfile_path or os.path.abspath(DEFAULT_DOCKERFILE)
        text = _read_dockerfile(dockerfile_path)
    context_dir = _context_dir(context, dockerfile_path)
    name_source = dockerfile_path or os.path.join(context_dir, DEFAULT_DOCKERFILE)
    stages = resolve_stages(text, build_args or {}, target)
    if check_sources:
        check_context_sources(stages, context_dir, dockerfile_path)
    analysis = _analyse(stages)
    sent = dockerfile_to_send(text, stages, build_args or {})
    return BuildPlan(
        name=_checked_name(name) if name is not None else default_name_for_dockerfile(name_source),
        dockerfile_text=sent.text,
        dockerfile_path=dockerfile_path,
        context_dir=context_dir,
        base_image=analysis.base_image,
        base_image_is_internal_stage=analysis.base_is_stage,
        additional_image_references=analysis.additional,
        unresolvable_image_references=analysis.unresolvable,
        ignored_instructions=analysis.ignored,
        warnings=_warnings(analysis.ignored, analysis.unresolvable) + sent.warnings,
    )


def _checked_name(name: str) -> str:
    """A name the platform can register: it travels as one URL path segment."""
    if not name.strip():
        raise UsageError("image name must not be empty", hint="pass --name NAME, or omit it")
    problem = None
    if name != name.strip() or any(ch.isspace() or not ch.isprintable() for ch in name):
        problem = "contains whitespace or control characters"
    elif any(ch in _NAME_FORBIDDEN for ch in name) or name in (".", ".."):
        problem = "is not a single path segment (no '/', '\\', '.' or '..')"
    elif len(name) > MAX_NAME_LENGTH:
        problem = f"is longer than {MAX_NAME_LENGTH} characters"
    if problem is not None:
        raise UsageError(
            f"image name {name!r} {problem}",
            hint="use letters, digits, '-', '_' and '.', e.g. --name my-image",
        )
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
class _Analysis:
    base_image: str
    base_is_stage: bool
    additional: tuple[str, ...]
    unresolvable: tuple[UnresolvableReference, ...]
    ignored: tuple[IgnoredInstruction, ...]


def _analyse(stages: Stages) -> _Analysis:
    """The images the builder needs: those of the stages the target reaches, nothing else.

    An earlier stage's base is added once its stage is over (after the images it copies from),
    the order the reference's planner reports them in.
    """
    additional: list[str] = []
    unresolvable: list[UnresolvableReference] = []
    ignored: list[IgnoredInstruction] = []
    final = stages.target
    for stage in stages.reachable():
        for reference in stage.side_images:
            _add(additional, reference)
        unresolvable += stage.side_unresolvable
        if stage.unresolvable is not None:
            unresolvable.append(stage.unresolvable)
        elif stage is not final and stage.is_image:
            _add(additional, stage.image)
        ignored += [
            IgnoredInstruction(i.line, i.keyword)
            for i in stage.instructions
            if i.keyword in IGNORED_KEYWORDS
        ]
    unresolvable.sort(key=lambda item: item.line)
    return _Analysis(
        base_image=final.image,
        base_is_stage=final.base_stage is not None,
        # The final base is the template's parent, not an additional image, unless it is a stage.
        additional=tuple(
            ref for ref in additional if final.base_stage is not None or ref != final.image
        ),
        unresolvable=tuple(unresolvable),
        ignored=tuple(ignored),
    )


def _add(references: list[str], reference: str) -> None:
    if reference not in references:
        references.append(reference)
