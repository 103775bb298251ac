"""Where a build's Dockerfile and context come from, and its Docker options, as ``docker build``
reads its command line (shared by ``kiln build`` and ``kiln plan``).

PATH a directory is the context, with its ``Dockerfile`` unless ``-f`` names another (relative
to the current directory, as Docker's); PATH a file is that Dockerfile with its directory as
the context (kiln's original form, kept); ``-`` reads the Dockerfile from stdin and sends no
context (an empty directory), and ``-f -`` reads it from stdin with PATH as the context.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import attrs

from kiln.cli._paths import user_state_dir
from kiln.errors import ConfigError, PlanError, UsageError
from kiln.plan import BuildPlan, default_name_for_dockerfile, plan_dockerfile
from kiln.plan.buildargs import parse_build_arg
from kiln.plan.planner import DEFAULT_DOCKERFILE

STDIN = "-"
EMPTY_CONTEXT_DIR = "empty-context"
DOCKERFILE_STEM = "dockerfile"


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """PATH, -f, -t and the build's Docker options, as ``docker build`` takes them."""
    parser.add_argument(
        "path",
        nargs="?",
        metavar="PATH",
        help="a directory: the build context, with its Dockerfile (unless -f); a file: that "
        "Dockerfile, its directory the context; '-': a Dockerfile on stdin and no context "
        "(default: .)",
    )
    parser.add_argument(
        "-f",
        "--file",
        metavar="FILE",
        help="the Dockerfile, relative to the current directory; '-' reads it from stdin "
        "(default: PATH/Dockerfile)",
    )
    parser.add_argument(
        "-t",
        "--tag",
        dest="name",
        metavar="NAME",
        help="the registered image name, same as --name (default: derived from the path)",
    )
    parser.add_argument(
        "--build-arg",
        dest="build_args",
        action="append",
        default=[],
        metavar="KEY[=VALUE]",
        help="set a build argument, repeatable; KEY alone takes its value from the environment "
        "(default: none)",
    )
    parser.add_argument(
        "--target", metavar="STAGE", help="build this stage (default: the last stage)"
    )
    parser.add_argument(
        "--platform",
        metavar="PLATFORM",
        help="must be linux/amd64, the builders' platform (default: linux/amd64)",
    )
    parser.add_argument(
        "--context",
        metavar="DIR",
        help="build context directory when PATH is a Dockerfile (default: its directory)",
    )


def plan_from_arguments(args: argparse.Namespace) -> BuildPlan:
    """The plan the arguments describe; literal COPY/ADD sources are checked in the context."""
    source = _source(args)
    return plan_dockerfile(
        source.dockerfile,
        text=source.text,
        context=source.context,
        name=args.name if args.name is not None else source.default_name,
        build_args=_build_args(args.build_args),
        target=args.target,
        platform=args.platform,
        check_sources=True,
    )


@attrs.frozen
class _Source:
    """Where the Dockerfile and the context come from, as `docker build` decides it."""

    dockerfile: str | None  # a path, or None when the text came from stdin
    text: str | None
    context: str
    default_name: str | None = None  # for a Dockerfile from stdin, which has no name of its own


def _source(args: argparse.Namespace) -> _Source:
    path, file = args.path or os.curdir, args.file
    if path == STDIN:
        if file is not None or args.context is not None:
            raise UsageError(
                "'-' reads the Dockerfile from stdin and sends no context: it takes no -f or "
                "--context",
                hint="kiln build - < Dockerfile, or kiln build -f - DIR < Dockerfile",
            )
        return _Source(None, _read_stdin(), str(_empty_context()), _name_of(os.getcwd()))
    if not os.path.exists(path):
        if DOCKERFILE_STEM in os.path.basename(path).lower():
            # kiln's original form, `kiln build path/Dockerfile`, with a typo in the path.
            raise PlanError(
                f"Dockerfile not found: {os.path.abspath(path)}",
                hint="pass the path to a Dockerfile, or the build context directory",
            )
        raise UsageError(
            f'unable to prepare context: path "{path}" not found',
            hint="pass the build context directory, or a Dockerfile",
        )
    if os.path.isdir(path):
        if args.context is not None:
            raise UsageError(
                "PATH is already the build context: --context applies only when PATH is a "
                "Dockerfile",
                hint=f"kiln build -f DOCKERFILE {path}",
            )
        if file == STDIN:
            return _Source(None, _read_stdin(), path, _name_of(path))
        return _Source(file or os.path.join(path, DEFAULT_DOCKERFILE), None, path)
    if file is not None:
        raise UsageError(
            f"{path} is a file, so it is the Dockerfile already: give the Dockerfile once",
            hint=f"kiln build -f {file} DIR, or kiln build {path}",
        )
    return _Source(path, None, args.context or os.path.dirname(os.path.abspath(path)))


def _name_of(directory: str) -> str:
    return default_name_for_dockerfile(os.path.join(os.path.abspath(directory), DEFAULT_DOCKERFILE))


def _read_stdin() -> str:
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UsageError(
            f"the Dockerfile on stdin is not UTF-8 text (byte {error.start})",
            hint="save the Dockerfile as UTF-8",
        ) from None


def _empty_context() -> Path:
    """The context of `kiln build -`: a directory kept empty, so a resumed build finds it too."""
    directory = user_state_dir() / EMPTY_CONTEXT_DIR
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if any(directory.iterdir()):
            raise UsageError(
                f"{directory} must be empty: it is the context of builds from stdin",
                hint=f"remove what is in {directory}",
            )
    except OSError as error:
        raise ConfigError(
            f"cannot create {directory}: {error.strerror}",
            hint="point XDG_STATE_HOME at a writable directory",
        ) from None
    return directory


def _build_args(given: list[str]) -> dict[str, str]:
    """``--build-arg`` values in order (a later one wins, as in Docker)."""
    values: dict[str, str] = {}
    for text in given:
        pair = parse_build_arg(text, os.environ)
        if pair is not None:
            values[pair[0]] = pair[1]
    return values
