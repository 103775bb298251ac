"""``kiln rm`` and ``kiln prune``: removing builds from the store, with their event logs.

Only builds that nothing will run again go: finished ones (whose builder sandbox is known to be
gone: the reaper finds a leftover one through its build's record), and builds that ran on the
embedded emulator of a ``kiln`` process that has ended. A running build is never removed.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from typing import Any

from kiln.cli._exit import EXIT_FAILED, EXIT_OK
from kiln.cli._records import declared_states, ran_embedded, removal_refused, running
from kiln.cli.durable import ID_HELP, store_command
from kiln.errors import BuildNotFound, KilnError, UsageError
from kiln.store import Store

# How many builds one prune statement deletes: a short transaction however long the history.
PRUNE_BATCH = 1000
# How many unfinished builds of each state prune looks through for dead embedded-emulator ones
# (the newest first: the store lists no other way); far more than a user leaves behind.
PRUNE_SCAN = 10_000
# `--older-than 7d`: a number and a unit, or several (`1d12h`).
DURATION_UNITS_S = {"w": 7 * 86_400.0, "d": 86_400.0, "h": 3_600.0, "m": 60.0, "s": 1.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([wdhms])")
_DURATION = re.compile(rf"(?:{_DURATION_PART.pattern})+")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``kiln rm`` and ``kiln prune``."""
    rm = store_command(
        sub,
        "rm",
        "remove builds that ended from the store, with their logs",
        "Remove builds from the store, with their event logs: builds that ended, and builds that "
        "ran on the embedded emulator of a kiln process that has ended. A running build is never "
        "removed, nor one whose builder sandbox may still exist (kiln cancel and kiln resume end "
        "it first). Prints each id removed; exit status 1 if any was not.",
        _rm,
    )
    rm.add_argument("build_ids", metavar="ID", nargs="+", help=ID_HELP + "; several may be given")

    prune = store_command(
        sub,
        "prune",
        "remove every build that ended (long enough ago) from the store",
        "Remove the builds that ended from the store, with their event logs, and the builds that "
        "ran on the embedded emulator of a kiln process that has ended; with --older-than, only "
        "those last written more than a duration ago. A running build is never removed; a build "
        "whose builder sandbox may still exist is kept for kiln reap.",
        _prune,
    )
    prune.add_argument(
        "--older-than",
        metavar="D",
        type=duration,
        help="only builds that ended more than D ago: 30m, 12h, 7d, 2w or 1d12h (default: every "
        "build that ended)",
    )


def duration(text: str) -> float:
    """``30m``, ``12h``, ``7d``, ``2w``, ``1d12h`` in seconds."""
    if not _DURATION.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 30m, 12h, 7d or 1d12h, got {text!r}"
        )
    return sum(
        float(number) * DURATION_UNITS_S[unit]
        for number, unit in _DURATION_PART.findall(text.strip())
    )


async def _rm(args: argparse.Namespace, store: Store) -> int:
    """Each build in turn, as ``docker rm``: one that cannot go is reported, the others go."""
    status = EXIT_OK
    for given in args.build_ids:
        try:
            print(await _remove(store, given), flush=True)
        except KilnError as error:
            print(f"kiln: error: {error.display()}", file=sys.stderr)
            status = EXIT_FAILED
    return status


async def _remove(store: Store, given: str) -> str:
    record = await store.get(given)
    if record is None:
        raise BuildNotFound(given)
    refused = removal_refused(record, embedded=await ran_embedded(store, record))
    if refused is not None:
        raise refused
    if not await store.delete(record.id, expected_version=record.version):
        raise UsageError(
            f"build {record.id} changed while it was being removed (a process took it): not"
            " removed",
            hint=f"`kiln status {record.id}` shows it now",
        )
    return record.id


async def _prune(args: argparse.Namespace, store: Store) -> int:
    older_than = args.older_than or 0.0
    finished_before = time.time() - older_than
    removed = 0
    while True:
        batch = await store.prune(finished_before=finished_before, limit=PRUNE_BATCH)
        removed += batch
        if batch < PRUNE_BATCH:
            break
    removed += await _prune_dead_embedded(store, finished_before)
    ago = f" more than {_spelled(older_than)} ago" if older_than else ""
    print(f"removed {removed} build{'' if removed == 1 else 's'} that ended{ago}")
    return EXIT_OK


async def _prune_dead_embedded(store: Store, before: float) -> int:
    """Remove the unfinished builds that ran on the embedded emulator of a process that has
    ended, last written before ``before``: nothing will ever finish them."""
    removed = 0
    for state in declared_states(unfinished=True):
        for record in await store.list(state=state, limit=PRUNE_SCAN):
            if record.updated_at >= before or running(record):
                continue
            if not await ran_embedded(store, record):
                continue
            if await store.delete(record.id, expected_version=record.version):
                removed += 1
    return removed


def _spelled(seconds: float) -> str:
    for unit, size in DURATION_UNITS_S.items():
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
