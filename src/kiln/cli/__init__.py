"""The ``kiln`` command: a thin dispatcher over one module per command group.

Each module in ``_COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its sub-commands
with ``set_defaults(func=...)``; a command function takes the parsed arguments and returns the
exit code. Errors are mapped to exit codes here, once: usage and plan errors exit 2, build and
remote errors exit 1, Ctrl-C exits 130, a closed standard output ends quietly (141, as SIGPIPE), a
build stopped because its store stayed unavailable exits 75.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from kiln._version import __version__
from kiln.cli._exit import EXIT_CANCELLED, EXIT_FAILED, EXIT_USAGE
from kiln.cli._help import HelpFormatter
from kiln.cli._modes import (
    JSON_OPTION,
    OWES_RESULT,
    PROGRESS_DEST,
    PROGRESS_JSON,
    PROGRESS_OPTION,
)
from kiln.cli._output import StdoutError, guarded_stdout, stdout_failed
from kiln.errors import BuildCancelled, KilnError, PlanError, UsageError

_COMMAND_MODULES = ("plan", "emulator", "build", "durable", "housekeeping", "completion")


class _CommandParser(argparse.ArgumentParser):
    """A sub-command's parser: an unknown argument is reported with that command's usage
    (``kiln build -x`` shows ``kiln build``'s), not the top level's. Its help shows defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras

    def error(self, message: str) -> NoReturn:
        _refuse(self, message)


class _Parser(argparse.ArgumentParser):
    """The top level's parser: its errors end as a sub-command's do."""

    def error(self, message: str) -> NoReturn:
        _refuse(self, message)


class _ArgumentsRefused(SystemExit):
    """The command line does not parse: argparse's exit (status 2, usage and message already
    on stderr), carrying the message for the JSON result a build command owes its reader."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(EXIT_USAGE)
        self.prog = parser.prog
        self.message = message
        self.owes_result = bool(parser.get_default(OWES_RESULT))


def _refuse(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    raise _ArgumentsRefused(parser, message)


def _json_requested(argv: Sequence[str]) -> bool:
    """Whether the command line asks for JSON output, read before it is parsed (it may not
    parse): ``--json``, ``--progress json`` or ``--progress=json``."""
    after_progress = [b for a, b in itertools.pairwise(argv) if a == PROGRESS_OPTION]
    return (
        JSON_OPTION in argv
        or f"{PROGRESS_OPTION}={PROGRESS_JSON}" in argv
        or PROGRESS_JSON in after_progress
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kiln",
        description="Build Tensorlake sandbox images from Dockerfiles.",
        epilog="`kiln COMMAND --help` tells more about each command.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "-V", "--version", action="version", version=f"kiln {__version__}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)
    for name in _COMMAND_MODULES:
        importlib.import_module(f"kiln.cli.{name}").register(sub)
    return parser


def exit_code_for(error: KilnError) -> int:
    if isinstance(error, UsageError | PlanError):
        return EXIT_USAGE
    if isinstance(error, BuildCancelled):
        return EXIT_CANCELLED
    return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    try:
        with guarded_stdout():
            return _parse_and_dispatch(argv)
    except StdoutError as error:
        return stdout_failed(error)
    except KeyboardInterrupt:
        # Ctrl-C while kiln loads its modules or parses: nothing has started, nothing to undo.
        print("kiln: interrupted", file=sys.stderr)
        return EXIT_CANCELLED


def _parse_and_dispatch(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(words)
    except _ArgumentsRefused as refused:
        if refused.owes_result and _json_requested(words):
            _json_result(refused.message, f"{refused.prog} --help shows the usage")
        raise
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if getattr(args, "json", False) or json_output(args):
        # With --json, stdout carries JSON only: a library warning logged through an
        # unconfigured structlog would otherwise be printed there.
        from kiln.cli._common import route_logs_to_stderr

        route_logs_to_stderr()
    return _dispatch(func, args)


def _dispatch(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return func(args)
    except KilnError as error:
        print(f"kiln: error: {error.display()}", file=sys.stderr)
        if json_output(args):
            _json_result(str(error), error.hint)
        return exit_code_for(error)
    except KeyboardInterrupt:
        print("kiln: interrupted", file=sys.stderr)
        return EXIT_CANCELLED


def json_output(args: argparse.Namespace) -> bool:
    """Whether the parsed command line is a build command's asking for JSON output, which ends
    with a result line whatever happens."""
    json_asked = getattr(args, "json", False) or getattr(args, PROGRESS_DEST, None) == PROGRESS_JSON
    return bool(getattr(args, OWES_RESULT, False) and json_asked)


def _json_result(error: str, hint: str | None) -> None:
    """With JSON output, every outcome ends with one result object on stdout: this one says
    that no build was started, and why."""
    from kiln.cli._view import refused_result

    print(json.dumps(refused_result(error, hint)))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
