"""The Image Service's builder stand-in (``tl-image-builder --spec S``), run in a builder sandbox.

The Image Service starts it server-side, after the context is sealed (or at once for an import),
as a root process in the build's sandbox, so a client follows its log the way the official
client does: through the lifecycle API (the sandbox) and the proxy (``/api/v1/processes``).

It is honest about what it is, like the legacy stand-in: it reads the Dockerfile from the sealed
context, applies the build args the way Docker expands ``ARG`` variables and logs one line per
instruction with them applied (RUN steps are logged, not executed); it "pulls" what the build
needs from registries (private ones need the forwarded credentials) and honours the injected
builder behaviour (``POST /_emulator/builder``). The snapshot and the publication are the
service's own later phases (``_image_service``).
"""

from __future__ import annotations

import asyncio
import json
import re
import tarfile
import time
from collections.abc import Mapping
from typing import Any

from kiln.emulator._builder import injected_failure, instructions, log_steps_and_progress
from kiln.emulator._context import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CommandContext
from kiln.emulator._process import Exit, exited
from kiln.emulator._registry import needed_images, pull_refusal
from kiln.emulator._vfs import ROOT, FsError

BUILDER_PROGRAM = "tl-image-builder"
BUILDER_COMMAND = "/usr/local/bin/" + BUILDER_PROGRAM
BUILDER_DIR = "/var/lib/tensorlake/image-builder"
SPEC_PATH = BUILDER_DIR + "/spec.json"
# The spec key that carries registry credentials: the sandbox is the trust boundary, nothing
# outside it (snapshot, log, introspection) ever holds them.
CREDENTIALS_KEY = "registryCredentialsJson"
# Docker expands ${NAME}, ${NAME:-word}, ${NAME:+word} and $NAME in instructions.
_VARIABLE = re.compile(
    r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([-+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)"
)
_ARG = re.compile(r"^ARG\s+(.+)$", re.IGNORECASE)
_FROM = re.compile(r"^FROM\s", re.IGNORECASE)


class _SpecProblem(Exception):
    """The spec or the context is unusable; the message says which part."""


def expand(text: str, values: Mapping[str, str]) -> str:
    """``text`` with the variables Docker would expand replaced; unknown ones stay as written."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(4)
        modifier, word = match.group(2), match.group(3)
        value = values.get(name)
        if modifier == "-":
            return value if value else word
        if modifier == "+":
            return word if value else ""
        return value if value is not None else match.group(0)

    return _VARIABLE.sub(replace, text)


class _Args:
    """Docker's ARG scoping: declarations before the first FROM serve FROM lines; each stage sees
    only what it declares (a bare ``ARG NAME`` re-imports a global one)."""

    def __init__(self, given: Mapping[str, str]) -> None:
        self.given = dict(given)
        self.global_scope: dict[str, str] = {}
        self.stage: dict[str, str] | None = None
        self.consumed: set[str] = set()

    def declare(self, declaration: str) -> None:
        scope = self.global_scope if self.stage is None else self.stage
        for word in declaration.split():
            name, has_default, default = word.partition("=")
            self.consumed.add(name)
            if name in self.given:
                scope[name] = self.given[name]
            elif has_default:
                scope[name] = expand(default, scope)
            elif self.stage is not None and name in self.global_scope:
                scope[name] = self.global_scope[name]

    def apply(self, step: str) -> str:
        if _FROM.match(step):
            self.stage = {}
            return expand(step, self.global_scope)
        if match := _ARG.match(step):
            self.declare(match.group(1))
            return step
        return expand(step, self.stage if self.stage is not None else self.global_scope)

    def unconsumed(self) -> list[str]:
        return sorted(set(self.given) - self.consumed)


def _read_spec(ctx: CommandContext, args: list[str]) -> dict[str, Any]:
    if len(args) != 2 or args[0] != "--spec":
        raise _SpecProblem(f"usage: {BUILDER_PROGRAM} --spec PATH (got {args!r})")
    try:
        spec = json.loads(ctx.sandbox.fs.read_file(ctx.path(args[1]), ROOT))
    except FsError as problem:
        raise _SpecProblem(f"cannot read spec: {problem.message}") from None
    except ValueError as problem:
        raise _SpecProblem(f"spec {args[1]} is not valid JSON: {problem}") from None
    if not isinstance(spec, dict):
        raise _SpecProblem(f"spec {args[1]} must be a JSON object")
    return spec


def _dockerfile(ctx: CommandContext, spec: dict[str, Any]) -> str:
    """An import's one-line Dockerfile, or the Dockerfile read from the sealed context."""
    if spec["kind"] == "import":
        return f"FROM {spec['image_ref']}\n"
    wanted = spec["dockerfile_path"]
    try:
        with tarfile.open(ctx.blobs.file(spec["context_key"]), mode="r:") as archive:
            for member in archive:
                if member.isfile() and member.name.removeprefix("./") == wanted:
                    handle = archive.extractfile(member)
                    if handle is not None:
                        return handle.read().decode("utf-8", errors="replace")
    except tarfile.TarError as problem:
        raise _SpecProblem(f"the build context is not a readable tar archive: {problem}") from None
    raise _SpecProblem(f"Dockerfile {wanted!r} is not in the build context")


def _pull(ctx: CommandContext, spec: dict[str, Any], dockerfile: str) -> Exit | None:
    """Pull what the build takes from registries; parents are images of this service."""
    private = ctx.private_registries
    if not private:
        return None
    local = [parent["reference"] for parent in spec["parents"]]
    for image in needed_images(dockerfile, local):
        ctx.process.emit(f"pulling {image}")
        refusal = pull_refusal(image, private, spec.get(CREDENTIALS_KEY))
        if refusal is not None:
            ctx.err(refusal)
            return exited(EXIT_FAILURE)
    return None


def _expanded(spec: dict[str, Any], dockerfile: str) -> tuple[list[str], list[str]]:
    """The instructions with the build args applied, and the args no ARG consumed."""
    args = _Args(spec["build_args"])
    steps = [args.apply(step) for step in instructions(dockerfile)]
    return steps, args.unconsumed()


async def _log_steps(ctx: CommandContext, spec: dict[str, Any], steps: list[str]) -> None:
    started = time.monotonic()
    for parent in spec["parents"]:
        ctx.process.emit(f"parent image {parent['reference']} ({parent['public_id']})")
    await log_steps_and_progress(ctx, steps, started)


async def run_image_builder(ctx: CommandContext, args: list[str]) -> Exit:
    if ctx.user != ROOT:
        ctx.err(f"{BUILDER_PROGRAM}: must run as root")
        return exited(EXIT_FAILURE)
    try:
        spec = _read_spec(ctx, args)
        dockerfile = await asyncio.to_thread(_dockerfile, ctx, spec)
    except _SpecProblem as problem:
        ctx.err(f"{BUILDER_PROGRAM}: {problem}")
        return exited(EXIT_USAGE)
    ctx.process.emit(
        f"{BUILDER_PROGRAM} (kiln emulator stand-in): {spec['kind']} build of {spec['name']!r}; "
        "RUN steps are logged, not executed"
    )
    steps, unused = _expanded(spec, dockerfile)
    if unused:
        ctx.process.emit(f"[Warning] One or more build-args {unused} were not consumed")
    refused = _pull(ctx, spec, "\n".join(steps))
    if refused is not None:
        return refused
    await _log_steps(ctx, spec, steps)
    failure = injected_failure(ctx)
    if failure is not None:
        return failure
    ctx.process.emit(f"{BUILDER_PROGRAM}: build steps done")
    return exited(EXIT_OK)
