"""What the build commands share: their options, the checks before a build starts, the view
and where logs go (``kiln build``/``import`` in cli/build.py, ``resume``/``submit`` in
cli/durable.py)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

import structlog

from kiln.builds import Template, option_keywords
from kiln.cli._modes import OWES_RESULT, PROGRESS_OPTION, Progress
from kiln.cli._view import JsonView, PlainView, QuietView, RichView, View
from kiln.errors import ContextError, KilnError, UsageError
from kiln.plan import BuildPlan, ContextArchive
from kiln.plan.buildargs import parse_build_arg

# The machine's logger repeats every build event, which the view already shows; it speaks up
# only for errors. Everything else (store outages, skipped context files) stays at warnings.
BUILD_LOGGER = "kiln.build"
LOG_FORMAT = "kiln: %(levelname)s %(name)s: %(message)s"


def add_build_options(parser: argparse.ArgumentParser) -> None:
    """The options of every command that starts a build (``--name``, sizes, ``--json``, ...)."""
    parser.add_argument(
        "--name", help="registered image name (default: derived from the Dockerfile or reference)"
    )
    add_result_options(parser)
    parser.add_argument(
        "--builder-disk-mb",
        metavar="N",
        type=positive_int,
        help="builder sandbox disk in MiB (default: what the platform proposes)",
    )
    parser.add_argument(
        "--cpus",
        metavar="F",
        type=positive_float,
        help="builder sandbox CPUs (default: what the platform proposes)",
    )
    parser.add_argument(
        "--memory-mb",
        metavar="N",
        type=positive_int,
        help="builder sandbox memory in MiB (default: what the platform proposes)",
    )
    parser.add_argument(
        "--cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="return the template of an earlier build with the same build key, if it is still"
        " registered, instead of building; --no-cache always builds (default: --cache)",
    )
    parser.add_argument(
        "--cas",
        action="store_true",
        help="build on Tensorlake's Image Service, as the official client does by default "
        "(default: off, the builder sandbox path)",
    )
    parser.add_argument(
        "--api-url",
        metavar="URL",
        help="Tensorlake API URL (default: $TENSORLAKE_API_URL, else the embedded emulator when "
        "no credentials are set)",
    )
    parser.add_argument(
        "--deadline",
        metavar="S",
        type=positive_float,
        help="overall limit in seconds (default: none)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="one JSON event per line on stdout (default: a live view on stderr)",
    )


def add_result_options(parser: argparse.ArgumentParser) -> None:
    """The build options that change the image built (and so the build key; `kiln plan` takes
    them to show it)."""
    parser.add_argument(
        "--public", action="store_true", help="make the image public (default: private)"
    )
    parser.add_argument(
        "--disk-mb",
        metavar="N",
        type=positive_int,
        help="target rootfs size in MiB (default: the parent template's, else 10240)",
    )
    parser.add_argument(
        "--docker-compat", action="store_true", help="ask for Docker compat (default: off)"
    )


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text}")
    return value


def build_options(args: argparse.Namespace) -> dict[str, Any]:
    """The build options of ``add_build_options`` (but the name and the API URL, which the
    commands check first), as the library takes them: the flags named as their keywords."""
    options = {keyword: getattr(args, keyword) for keyword in option_keywords(cli=True)}
    if args.cas:
        # The plan applies --build-arg as docker build does (FROM lines included); the Image
        # Service applies them too, natively, so on --cas they are sent with the build.
        options["build_args"] = cas_build_args(getattr(args, "build_args", None) or [])
    return options


def cas_build_args(given: list[str]) -> dict[str, str]:
    """``--build-arg`` values as the Image Service takes them (a later one wins, as in Docker;
    ``KEY`` alone takes its value from the environment, and is dropped when that has none)."""
    values: dict[str, str] = {}
    for text in given:
        pair = parse_build_arg(text, os.environ)
        if pair is not None:
            values[pair[0]] = pair[1]
    return values


def check_context(plan: BuildPlan) -> None:
    """Context problems are the caller's to fix: say so now (exit 2), not after a sandbox was
    made. A missing directory, an unreadable file, a bad .dockerignore pattern, a link that
    cannot be read: the walk the upload will make finds them all."""
    if plan.context_dir is None:
        return
    if not os.path.isdir(plan.context_dir):
        raise ContextError(
            f"build context not found: {plan.context_dir}",
            hint="pass an existing directory as PATH (or --context with a Dockerfile PATH)",
        )
    # Files that cannot be archived (FIFOs, sockets) are skipped with a warning; the build
    # reports those itself when it uploads.
    archive = ContextArchive(
        plan.context_dir, dockerfile=plan.dockerfile_path, on_warning=lambda _text: None
    )
    archive.entries()


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """How ``kiln build``/``import`` show their progress and report the image, as docker
    build's flags of the same names do."""
    parser.add_argument(
        PROGRESS_OPTION,
        choices=[mode.value for mode in Progress],
        default=Progress.AUTO.value,
        help="how progress is shown: auto (a live view when stderr is a terminal, else plain),"
        " plain (every line on stderr, uncut), tty (the live view; stderr must be a terminal),"
        " json (the same as --json)",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print only the template id on stdout, on success; the error on stderr otherwise"
        " (default: off)",
    )
    parser.add_argument(
        "--iidfile",
        metavar="FILE",
        type=Path,
        help="write the template id to FILE on success, removed first as docker build does"
        " (default: none)",
    )
    parser.set_defaults(**{OWES_RESULT: True})


def output_mode(args: argparse.Namespace) -> Progress:
    """The progress mode asked for; ``--json`` is ``--progress json``. Checked before anything
    starts: docker build refuses ``--quiet`` with another mode than auto, and a tty mode
    without a terminal."""
    mode = Progress.JSON if args.json else Progress(getattr(args, "progress", Progress.AUTO))
    if getattr(args, "quiet", False) and mode != Progress.AUTO:
        raise UsageError(
            f"--quiet and --progress {mode.value} cannot be used together",
            hint="--quiet prints only the template id; drop one of them",
        )
    if mode == Progress.TTY and not sys.stderr.isatty():
        raise UsageError(
            "--progress tty: standard error is not a terminal",
            hint="use --progress plain (or auto) where stderr is a file or a pipe",
        )
    return mode


def make_view(args: argparse.Namespace) -> View:
    mode = output_mode(args)
    if getattr(args, "quiet", False):
        return QuietView(sys.stdout, sys.stderr)
    if mode == Progress.JSON:
        return JsonView(sys.stdout)
    if mode == Progress.TTY or (mode == Progress.AUTO and sys.stderr.isatty()):
        return RichView()
    return PlainView(sys.stderr)


def forget_iidfile(args: argparse.Namespace) -> None:
    """Remove ``--iidfile``'s file before the build starts, as docker build does: a file left
    by an earlier build must not pass for this one's result when this one fails."""
    path: Path | None = getattr(args, "iidfile", None)
    if path is None:
        return
    try:
        path.unlink(missing_ok=True)
    except OSError as error:
        raise UsageError(
            f"cannot remove the --iidfile {path}: {error.strerror}",
            hint="pass a path kiln may write",
        ) from None


def write_iidfile(args: argparse.Namespace, template: Template) -> None:
    """Write the template id to ``--iidfile``, without a newline (as docker build writes the
    image id)."""
    path: Path | None = getattr(args, "iidfile", None)
    if path is None:
        return
    try:
        path.write_text(template.id, encoding="utf-8")
    except OSError as error:
        raise KilnError(
            f"the image is registered as template {template.id}, but the --iidfile {path}"
            f" cannot be written: {error.strerror}",
            hint="pass a path kiln may write",
        ) from None


def route_logs_to_stderr() -> None:
    """Send library and emulator logs to stderr, warnings and up.

    stdout belongs to the view (with ``--json``, to JSON lines only), and unconfigured structlog
    prints to stdout. Logs go through stdlib logging, as the library's own fallback does; a
    handler already installed (a caller embedding ``main()``, pytest) is kept.
    """
    if not structlog.is_configured():
        structlog.configure(
            processors=[
                structlog.stdlib.filter_by_level,
                structlog.processors.format_exc_info,
                structlog.processors.KeyValueRenderer(key_order=["event"]),
            ],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
        )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format=LOG_FORMAT)
    logging.getLogger(BUILD_LOGGER).setLevel(logging.ERROR)
