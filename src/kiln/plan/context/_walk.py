"""Walking the context as ``docker build`` does: `.dockerignore` decides, links stay links.

Sockets, devices and FIFOs cannot be archived and are skipped with a warning; in-memory extra
files join the walk's entries, refused where they would clash on extraction.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import attrs

from kiln._logging import logger
from kiln.errors import ContextError
from kiln.plan.context._entries import PATH_SEP, ContextEntry, EntryKind, ExtraFile
from kiln.plan.context._errors import collision, unreadable, vanished
from kiln.plan.dockerignore import DOCKERIGNORE, PatternMatcher, read_dockerignore

_DISK_MODE_MASK = 0o7777
# In-memory files keep permission bits only, as the reference does.
_EXTRA_MODE_MASK = 0o777
# Mode of the directory entries made for an extra file's missing parents.
_IMPLIED_DIR_MODE = 0o755


# The name the package had as one module; applications filter on it.
_LOGGER = "kiln.plan.context"


def scan(
    context_dir: Path,
    dockerfile: str | os.PathLike[str] | None,
    extra_files: Sequence[ExtraFile],
    warn: Callable[[str], None],
) -> list[ContextEntry]:
    """The archive members in archive order: the walk's entries and the extra files."""
    _check_context_dir(context_dir)
    always = _always_included(context_dir, dockerfile)
    matcher = PatternMatcher(read_dockerignore(context_dir, dockerfile=dockerfile))
    return _with_extras(_walk(str(context_dir), matcher, always, warn), extra_files)


def log_warning(message: str) -> None:
    """What a walk reports when the caller gave no ``on_warning``."""
    logger(_LOGGER).warning("context_entry_skipped", detail=message)


def _check_context_dir(context_dir: Path) -> None:
    if not context_dir.exists():
        raise ContextError(
            f"build context not found: {context_dir}",
            hint="pass an existing directory as the build context (it defaults to the "
            "Dockerfile's directory)",
        )
    if not context_dir.is_dir():
        raise ContextError(
            f"build context is not a directory: {context_dir}",
            hint="pass the directory that holds the files the Dockerfile copies",
        )


def _always_included(
    context_dir: Path, dockerfile: str | os.PathLike[str] | None
) -> frozenset[str]:
    """`.dockerignore` and the Dockerfile (when inside the context) are sent regardless."""
    always = {DOCKERIGNORE}
    if dockerfile is not None:
        rel = os.path.relpath(os.path.abspath(dockerfile), context_dir)
        if rel != os.curdir and rel.split(os.sep)[0] != os.pardir:
            always.add(Path(rel).as_posix())
    return frozenset(always)


@attrs.define
class _Dir:
    """A directory being walked: its remaining listing and the entries found below it so far."""

    rel: str
    listing: Iterator[tuple[str, os.stat_result]]
    excluded: bool
    mode: int
    entries: list[ContextEntry] = attrs.Factory(list)


def _walk(
    root: str, matcher: PatternMatcher, always: frozenset[str], warn: Callable[[str], None]
) -> list[ContextEntry]:
    """The entries below ``root``, deciding each path as Docker does, in archive order.

    Depth-first with a stack of its own rather than recursion: a context may nest deeper than
    Python's recursion limit (1,200 directories raised RecursionError). A directory's entry
    precedes what is below it, and an excluded directory gets one only when something beneath
    it is re-included.
    """
    top = _Dir("", iter(_list_dir(root, "")), excluded=False, mode=0)
    stack = [top]
    while stack:
        current = stack[-1]
        item = next(current.listing, None)
        if item is None:
            stack.pop()
            if stack and (current.entries or not current.excluded):
                parent = stack[-1].entries
                parent.append(ContextEntry(current.rel, EntryKind.DIR, 0, current.mode))
                parent.extend(current.entries)
            continue
        name, st = item
        rel = f"{current.rel}{PATH_SEP}{name}" if current.rel else name
        excluded = rel not in always and matcher.matches(rel)
        if stat.S_ISDIR(st.st_mode):
            if not excluded or _may_include_beneath(rel, matcher, always):
                listing = iter(_list_dir(root, rel))
                stack.append(_Dir(rel, listing, excluded, st.st_mode & _DISK_MODE_MASK))
        elif not excluded:
            entry = _leaf_entry(root, rel, st, warn)
            if entry is not None:
                current.entries.append(entry)
    return top.entries


def _may_include_beneath(rel_dir: str, matcher: PatternMatcher, always: frozenset[str]) -> bool:
    prefix = rel_dir + PATH_SEP
    return matcher.may_include_beneath(rel_dir) or any(p.startswith(prefix) for p in always)


def _list_dir(root: str, rel_dir: str) -> list[tuple[str, os.stat_result]]:
    """Names and lstat results of one directory, sorted by name."""
    where = os.path.join(root, rel_dir)
    try:
        with os.scandir(where) as listing:
            found = [(e.name, e.stat(follow_symlinks=False)) for e in listing]
        return sorted(found, key=lambda item: item[0])
    except FileNotFoundError as exc:
        raise vanished(rel_dir or ".") from exc
    except PermissionError as exc:
        raise unreadable(rel_dir or ".", exc) from exc
    except OSError as exc:
        raise ContextError(
            f"cannot list {where}: {exc.strerror or exc}",
            hint="check the build context directory, or exclude it in .dockerignore",
        ) from exc


def _leaf_entry(
    root: str, rel: str, st: os.stat_result, warn: Callable[[str], None]
) -> ContextEntry | None:
    mode = st.st_mode & _DISK_MODE_MASK
    if stat.S_ISREG(st.st_mode):
        if not os.access(os.path.join(root, rel), os.R_OK):
            raise unreadable(rel, None)
        return ContextEntry(rel, EntryKind.FILE, st.st_size, mode)
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(os.path.join(root, rel))
        except FileNotFoundError as exc:
            raise vanished(rel) from exc
        except OSError as exc:  # /proc/1/cwd: EACCES even for root
            raise unreadable(rel, exc) from exc
        return ContextEntry(rel, EntryKind.SYMLINK, 0, mode, link_target=target)
    warn(f"skipping {rel}: a {_kind_name(st.st_mode)} cannot be part of a build context")
    return None


def _kind_name(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def _with_extras(disk: list[ContextEntry], extras: Sequence[ExtraFile]) -> list[ContextEntry]:
    """Disk entries plus the in-memory files, refusing any that would clash on extraction."""
    kinds = {entry.path: entry.kind for entry in disk}
    added: list[ContextEntry] = []
    for extra in sorted(extras, key=lambda e: e.path):
        if extra.path in kinds:
            raise collision(extra.path, f"the {kinds[extra.path]} {extra.path!r}")
        parts = extra.path.split(PATH_SEP)
        for depth in range(1, len(parts)):
            parent = PATH_SEP.join(parts[:depth])
            kind = kinds.get(parent)
            if kind is None:
                # Explicit parents keep their mode independent of the extracting user's umask.
                kinds[parent] = EntryKind.DIR
                added.append(ContextEntry(parent, EntryKind.DIR, 0, _IMPLIED_DIR_MODE))
            elif kind is not EntryKind.DIR:
                raise collision(extra.path, f"the {kind} {parent!r}")
        kinds[extra.path] = EntryKind.FILE
        mode = extra.mode & _EXTRA_MODE_MASK
        added.append(ContextEntry(extra.path, EntryKind.FILE, len(extra.content), mode))
    return sorted(disk + added, key=lambda e: e.path)
