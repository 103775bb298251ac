"""The ``kiln`` command's exit statuses, all of them, in one place.

0 done, 1 failed, 2 usage (or Dockerfile) error, 75 the store stayed unavailable, and for a
process stopped by a signal what a shell reports: 128 + the signal's number (130 Ctrl-C,
143 SIGTERM, 129 SIGHUP, 141 a closed stdout).
"""

from __future__ import annotations

import signal

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
# sysexits' EX_TEMPFAIL: the store was down, nothing was lost, the same build can be continued.
EXIT_STORE_UNAVAILABLE = 75
# The shell's exit status for a process ended by a signal, and kiln's for a build it cancelled.
SIGNAL_EXIT_BASE = 128
EXIT_CANCELLED = SIGNAL_EXIT_BASE + signal.SIGINT
# What a shell reports for a process killed by SIGPIPE, the exit status of `yes | head -1`'s yes.
EXIT_BROKEN_PIPE = SIGNAL_EXIT_BASE + signal.SIGPIPE
# A write error other than a closed pipe (a full disk, /dev/full): a plain failure, with a message.
EXIT_WRITE_FAILED = EXIT_FAILED


def exit_for_signal(signum: int) -> int:
    """The status a shell reports for a process ended by ``signum``."""
    return SIGNAL_EXIT_BASE + signum
