"""What the emulator saw, read through its admin API (:class:`kiln.testing.EmulatorClient`):
builder starts, commands run, completes served, the files of a registered snapshot."""

from __future__ import annotations

import io
import shlex
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kiln.testing import EmulatorClient

BUILDER_NAME = "tl-rootfs-build"
COMPLETE_PATH_END = "/complete"
HTTP_OK = 200
SHELL_AND = "&&"


def builder_starts(emulator: EmulatorClient, sandbox_ids: Sequence[str] | None = None) -> int:
    """How many times the builder was started (in the given sandboxes, or in any)."""
    return sum(
        1
        for p in builder_processes(emulator)
        if sandbox_ids is None or p["sandbox_id"] in sandbox_ids
    )


def command_runs(emulator: EmulatorClient, command: str) -> int:
    """How many processes ran ``command``, alone or as a step of a shell list (``tar``: how
    often a context was extracted)."""
    return sum(1 for p in emulator.processes() if runs_step(p, command))


def completes_served(requests: Iterable[dict[str, Any]]) -> int:
    """Complete calls the platform acted on (a fault's answer never reaches it)."""
    return sum(
        1
        for r in requests
        if r["method"] == "POST"
        and r["path"].endswith(COMPLETE_PATH_END)
        and r["status"] == HTTP_OK
    )


def builder_processes(emulator: EmulatorClient) -> list[dict[str, Any]]:
    """Every start of the builder, in order, with its pid and exit status: alone (the official
    client) or as a step of kiln's one shell process."""
    return [p for p in emulator.processes() if runs_step(p, BUILDER_NAME)]


def runs_step(process: Mapping[str, Any], command: str) -> bool:
    """Whether ``process`` runs ``command`` (a bare name matches its absolute path too): as
    itself, or as a step of a ``sh -c 'a && b'`` list (kiln's builder process, a part's
    extraction)."""
    args = process.get("args", [])
    words = [process["command"]]
    if process["command"].endswith("/sh") and len(args) == 2 and args[0] == "-c":
        steps = " ".join(shlex.split(args[1])).split(f" {SHELL_AND} ")
        words = [step.split(" ", 1)[0] for step in steps]
    return any(word == command or word.endswith(f"/{command}") for word in words)


def snapshot_files(emulator: EmulatorClient, template: dict[str, Any]) -> dict[str, bytes]:
    """The regular files in the snapshot a registered template names, by archive path."""
    blob = emulator.blob(str(template["snapshotUri"]))
    files = {}
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as archive:
        for member in archive.getmembers():
            content = archive.extractfile(member) if member.isfile() else None
            if content is not None:
                files[member.name] = content.read()
    return files
