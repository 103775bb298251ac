"""The archive's members as values: what a walk finds and what a caller adds from memory."""

from __future__ import annotations

import enum

import attrs

from kiln.errors import ContextError

PATH_SEP = "/"


class EntryKind(enum.StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"


@attrs.frozen
class ContextEntry:
    """One archive member: POSIX path relative to the context, kind, content size, mode bits."""

    path: str
    kind: EntryKind
    size: int
    mode: int
    link_target: str = ""


def _check_extra_path(_inst: object, _attr: attrs.Attribute[str], path: str) -> None:
    parts = path.split(PATH_SEP)
    if not path or any(part in ("", ".", "..") for part in parts) or "\0" in path:
        raise ContextError(
            f"extra context file path {path!r} is not a clean relative path",
            hint="use a relative POSIX path with no leading '/', no '.', '..' or empty parts",
        )
    try:
        path.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ContextError(
            f"extra context file path {path!r} is not valid UTF-8",
            hint="use a UTF-8 path",
        ) from exc


@attrs.frozen
class ExtraFile:
    """A file added to the context from memory (permission bits of ``mode`` are kept)."""

    path: str = attrs.field(validator=[attrs.validators.instance_of(str), _check_extra_path])
    content: bytes = attrs.field(validator=attrs.validators.instance_of(bytes))
    mode: int = attrs.field(default=0o644, validator=attrs.validators.instance_of(int))
