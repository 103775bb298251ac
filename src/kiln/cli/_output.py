"""Standard output that goes away: a closed pipe (``kiln ls | head -1``) or a full device.

A Unix tool whose reader has gone stops quietly: ``yes | head -1`` leaves no message. Python
instead raises BrokenPipeError at the first write after the reader closed, and a failed flush at
interpreter exit prints "Exception ignored" and exits 120. kiln cannot simply restore SIGPIPE's
default action (death): a ``kiln build`` killed that way would skip the cleanup that deletes its
builder sandbox. So while a command runs, stdout is wrapped to tell its write errors apart from
any other OSError; the dispatcher ends the process on one, after pointing stdout at /dev/null so
that the interpreter's last flush has somewhere to go.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO, cast

from kiln.cli._exit import EXIT_BROKEN_PIPE, EXIT_WRITE_FAILED


class StdoutError(OSError):
    """Writing standard output failed (the reader closed the pipe, the device is full)."""


class StdoutClosed(StdoutError, BrokenPipeError):
    """The reader of standard output has gone; still a BrokenPipeError, so a view that carries
    on without its reader (``kiln build --json | head -1``) catches it as before."""


class _GuardedStdout:
    """Standard output whose write errors are StdoutError; everything else is passed through."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    # Plain try blocks: a context manager per call cost more than a short write did
    # (bench_logs' profile).
    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as error:
            raise _stdout_error(error) from error

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as error:
            raise _stdout_error(error) from error

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _stdout_error(error: OSError) -> StdoutError:
    if isinstance(error, BrokenPipeError):
        return StdoutClosed(error.errno, error.strerror)
    return StdoutError(error.errno, error.strerror)


@contextlib.contextmanager
def guarded_stdout() -> Iterator[None]:
    """Within the block, a failed write to ``sys.stdout`` raises StdoutError; the block's output
    is flushed at its end, so that a failure surfaces while it can still be handled."""
    original = sys.stdout
    sys.stdout = cast(TextIO, _GuardedStdout(original))
    try:
        yield
    finally:
        try:
            sys.stdout.flush()
        finally:
            sys.stdout = original


def stdout_failed(error: StdoutError) -> int:
    """The exit code for a failed write to stdout: a closed pipe ends quietly, any other error
    is named once on stderr. Either way stdout then leads to /dev/null, since the bytes still
    buffered would fail again at exit."""
    _discard_stdout()
    if isinstance(error, BrokenPipeError) or error.errno == errno.EPIPE:
        return EXIT_BROKEN_PIPE
    with contextlib.suppress(OSError):
        print(f"kiln: error: cannot write to standard output: {error.strerror}", file=sys.stderr)
    return EXIT_WRITE_FAILED


def _discard_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        # No descriptor behind stdout (a caller's in-memory stream): nothing to redirect.
        # (io.UnsupportedOperation, from fileno(), is a ValueError and an OSError.)
        pass
