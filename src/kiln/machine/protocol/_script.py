"""The builder's one process: extraction, the builder and its metadata as one shell list.

Every remote step after the uploads runs in one root process, ``/bin/sh -c 'a && b && ...'``: make
the context directory, extract the archive, remove it, run the builder, remove the spec (it holds
registry credentials), print the metadata. Started, followed and reattached to like the builder
alone (docs/protocol.md#run-the-builder), it saves a round trip per step, and the metadata and the
exit status arrive on the follow stream instead of by a GET each.

The shell announces each step on stdout before it runs it (a marker line carrying the build's
id, which a build's own output cannot guess): the reader knows which command failed, so the
error keeps the reference's wording (``Command 'tar' failed with exit code 2``), and it knows
which lines are the metadata rather than the build log. The last marker, printed only when every
step succeeded, is the exit status: a stream that carries it needs no status request after it.
"""

from __future__ import annotations

import collections
import shlex
from collections.abc import Sequence

import attrs

from kiln.machine.protocol._diagnostics import command_failed_message
from kiln.machine.protocol._layout import (
    REMOTE_ARCHIVE_PATH,
    REMOTE_CONTEXT_DIR,
    REMOTE_METADATA_PATH,
    REMOTE_SPEC_PATH,
)

# The daemon does not search PATH (docs/protocol.md#run-the-builder): the shell by its absolute
# path.
SHELL = "/bin/sh"
SHELL_FLAG = "-c"
# The step whose output is the metadata, not build log.
METADATA_STEP = "cat"
# Printed after the last step: every step exited 0.
END_WORD = "end"
# A shell reports a child killed by signal N as exit status 128 + N.
SIGNALLED_EXIT_BASE = 128
# Linux numbers its signals up to SIGRTMAX.
MAX_SIGNAL = 64
# How many of a failed step's last stderr lines its error carries (the log gets them all).
STDERR_TAIL_LINES = 20


def marker_prefix(build: str) -> str:
    return f"::kiln-{build}::"


def directory_step() -> list[str]:
    """The build directory and its context directory, made by root (nothing else writes there).
    First in every process: the builder writes its metadata in the build directory."""
    return ["mkdir", "-p", REMOTE_CONTEXT_DIR]


def extraction_steps(archive: str = REMOTE_ARCHIVE_PATH) -> list[list[str]]:
    """Extract the uploaded archive into the context directory, then remove the archive.
    Run as root, as the builder is: ``--no-same-owner`` gives the files to root, as the
    sandbox user's extraction gave them to it, instead of the archive's owners."""
    return [
        ["tar", "-xzf", archive, "-C", REMOTE_CONTEXT_DIR, "--no-same-owner"],
        ["rm", "-f", archive],
    ]


def builder_steps(argv: Sequence[str]) -> list[list[str]]:
    """The builder, the spec's removal (it holds credentials) and the metadata's printing."""
    return [list(argv), ["rm", "-f", REMOTE_SPEC_PATH], [METADATA_STEP, REMOTE_METADATA_PATH]]


def shell_argv(build: str, steps: Sequence[Sequence[str]]) -> list[str]:
    """``/bin/sh -c SCRIPT`` running ``steps`` in order, each announced, the end marked."""
    prefix = marker_prefix(build)
    words: list[str] = []
    for step in steps:
        words += [shlex.join(["echo", prefix + step[0]]), shlex.join(step)]
    words.append(shlex.join(["echo", prefix + END_WORD]))
    return [SHELL, SHELL_FLAG, " && ".join(words)]


@attrs.define
class ScriptReader:
    """Reads the shell's output lines in order: which step runs, the metadata, the end.

    ``read`` returns the line when it belongs to the build log, None for a marker or a
    metadata line.
    """

    prefix: str
    step: str | None = None
    steps_seen: int = 0
    ended: bool = False
    metadata: list[str] = attrs.field(factory=list)
    _stderr: collections.deque[str] = attrs.field(
        factory=lambda: collections.deque(maxlen=STDERR_TAIL_LINES)
    )

    def read(self, line: str, stream: str) -> str | None:
        if stream != "stderr" and line.startswith(self.prefix):
            word = line.removeprefix(self.prefix)
            if word == END_WORD:
                self.ended = True
            else:
                self.step = word
                self.steps_seen += 1
                self._stderr.clear()
            return None
        if self.step == METADATA_STEP and stream != "stderr":
            self.metadata.append(line)
            return None
        if stream == "stderr":
            self._stderr.append(line)
        return line

    def failure(self, code: int, oom: bool, *, with_stderr: bool = True) -> str:
        """The reference's message for the step that failed, with its last stderr lines."""
        command = self.step or SHELL
        message = command_failed_message(command, code, oom)
        tail = [line for line in self._stderr if line.strip()] if with_stderr else []
        if not tail:
            return message
        return message + ":\n" + "\n".join(f"  {line}" for line in tail)


def step_exit_code(code: int) -> int:
    """The failed step's own code: a shell reports a child killed by signal N as 128 + N, which
    the reference spells -N (as for the builder started alone)."""
    if SIGNALLED_EXIT_BASE < code <= SIGNALLED_EXIT_BASE + MAX_SIGNAL:
        return SIGNALLED_EXIT_BASE - code
    return code
