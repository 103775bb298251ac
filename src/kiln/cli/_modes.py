"""How a build command shows its progress: ``--progress auto|plain|tty|json``, as docker build's
flag (``--json`` is ``--progress json``). A light module: the dispatcher reads these names from
a command line that may not even parse."""

from __future__ import annotations

import enum

JSON_OPTION = "--json"
PROGRESS_OPTION = "--progress"
# Where argparse keeps it.
PROGRESS_DEST = "progress"
# A parser default naming the commands whose JSON output ends with a result line whatever
# happens (kiln build, import, resume): a refused command line or an error gets one too.
OWES_RESULT = "owes_result"


class Progress(enum.StrEnum):
    # A live view on a terminal (stderr is one), plain lines otherwise: docker build's default.
    AUTO = "auto"
    # Every line as it comes, never redrawn, never cut: for logs, CI and scrollback.
    PLAIN = "plain"
    # The live view, even where stderr is not a terminal.
    TTY = "tty"
    # One JSON event per line on stdout, ending with the result (docs/events.schema.json).
    JSON = "json"


PROGRESS_JSON = Progress.JSON.value
