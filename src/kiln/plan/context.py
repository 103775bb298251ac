"""The build context: walked with Docker's rules, streamed as a deterministic tar.gz.

Choices, and why:

- **What is sent.** Whatever ``docker build`` would send: `.dockerignore` with moby's semantics
  (:mod:`kiln.plan.dockerignore`); the Dockerfile (when it lies inside the context) and
  `.dockerignore` are always sent, even when a pattern excludes them.
- **Symlinks stay symlinks.** A link is archived as a link and never followed, so a link to
  ``/etc/passwd`` uploads a path, not the file. Sockets, devices and FIFOs cannot be archived and
  are skipped with a warning. Hard links are archived as independent regular files.
- **Directories get entries**, so empty directories and directory modes survive the remote
  ``tar -x``. An excluded directory still gets one when something beneath it is re-included.
- **Deterministic bytes.** Entries sorted by path, GNU headers, uid/gid 0, no user or group
  names, mtime 0, modes kept (``& 0o7777``); gzip header with mtime 0 and no file name. The
  uncompressed digest therefore depends on paths, modes, link targets and contents only, which is
  what the resume logic compares.
- **Bounded memory.** Files are read in pieces and compressed on the way; the stream is cut into
  chunks of at most ``chunk_size`` bytes. Nothing holds the whole archive.
- **Fast.** One gzip member at level 1, compressed in 1 MiB blocks on a few threads (pigz's
  scheme, see :class:`_ParallelGzip`); the bytes do not depend on the number of threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import io
import itertools
import os
import queue
import stat
import struct
import tarfile
import threading
import zlib
from collections import deque
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import attrs
import structlog

from kiln.errors import ContextError
from kiln.plan.dockerignore import DOCKERIGNORE, PatternMatcher, read_dockerignore

DEFAULT_CHUNK_SIZE = 1 << 20
# How much of a file is read at once: large enough for throughput, small enough to bound memory.
_READ_SIZE = 1 << 20
# Fast compression, as the reference: the archive is built once per upload and speed dominates.
_GZIP_LEVEL = 1
# gzip header: deflate, no flags (so no file name), mtime 0, "fastest" extra flag, OS unknown.
# Fixed bytes, so the archive is the same whichever machine builds it.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff"
_RAW_DEFLATE = -zlib.MAX_WBITS
# An empty final deflate block: closes a stream made of sync-flushed pieces.
_DEFLATE_END = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, _RAW_DEFLATE).flush()
# The tar stream is compressed in blocks of this size on several threads (zlib releases the GIL);
# deflate of incompressible data runs at tens of MB/s per core, so one core is the bottleneck.
_DEFLATE_BLOCK = 1 << 20
# A block none of whose samples deflate below this share of their size is stored, not deflated:
# incompressible data (archives, images, model weights) deflates at ~40 MB/s a core even at level
# 1 and gains nothing, while storing runs at memory speed. bench_large_context's profile: level 1
# on its 225 MiB of random bytes cost ~6 s of CPU, the whole of the archive's.
_INCOMPRESSIBLE_RATIO = 0.95
_SAMPLES = 4
_SAMPLE_BYTES = 8 << 10
_STORED = 0
# Deflate's window: each block is primed with this much of what precedes it, so splitting the
# stream costs almost no compression.
_DEFLATE_WINDOW = 32 << 10
# Beyond a few threads the upload, not compression, is the limit; more would only cost memory.
_MAX_DEFLATE_THREADS = 4
# The gzip trailer stores the uncompressed length modulo 2**32.
_ISIZE_MASK = 0xFFFFFFFF
_GZIP_THREAD_NAME = "kiln-context-gzip"
_PROGRESS_EVERY = 64 << 20
# Chunks waiting between the archiving thread and the uploader: enough to keep both busy.
_QUEUE_CHUNKS = 4
_DISK_MODE_MASK = 0o7777
# In-memory files keep permission bits only, as the reference does.
_EXTRA_MODE_MASK = 0o777
# Mode of the directory entries made for an extra file's missing parents.
_IMPLIED_DIR_MODE = 0o755
_PATH_SEP = "/"

_log = structlog.get_logger("kiln.plan.context")


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
    parts = path.split(_PATH_SEP)
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


@attrs.frozen
class ContextSummary:
    """What the context holds; ``digest`` is ``sha256:<hex>`` of the uncompressed tar stream."""

    dir: str
    files: int
    bytes: int
    digest: str


@attrs.frozen
class _StreamResult:
    compressed_bytes: int
    compressed_sha256: str
    digest: str


def summarize_context(
    context_dir: str | os.PathLike[str],
    *,
    dockerfile: str | os.PathLike[str] | None = None,
    extra_files: Sequence[ExtraFile] = (),
    on_warning: Callable[[str], None] | None = None,
) -> ContextSummary:
    """Walk and digest the context without compressing it; ``on_warning`` receives what would
    otherwise be logged (files that cannot be archived)."""
    archive = ContextArchive(
        context_dir, dockerfile=dockerfile, extra_files=extra_files, on_warning=on_warning
    )
    tar_hash = hashlib.sha256()
    for piece in archive.tar_stream():
        tar_hash.update(piece)
    return ContextSummary(
        dir=str(archive.context_dir),
        files=archive.files,
        bytes=archive.uncompressed_bytes,
        digest=f"sha256:{tar_hash.hexdigest()}",
    )


class ContextArchive:
    """The context as a gzip tar stream.

    ``entries()`` walks the context once. ``chunks()`` (or ``achunks()``) may be consumed more
    than once, e.g. to retry an upload; each full pass sets ``compressed_bytes``,
    ``compressed_sha256`` (hex) and ``digest`` (``sha256:<hex>`` of the uncompressed tar).
    """

    def __init__(
        self,
        context_dir: str | os.PathLike[str],
        *,
        dockerfile: str | os.PathLike[str] | None = None,
        extra_files: Sequence[ExtraFile] = (),
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        on_progress: Callable[[int, int], None] | None = None,
        on_warning: Callable[[str], None] | None = None,
    ) -> None:
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.context_dir = Path(os.path.abspath(context_dir))
        self._dockerfile = dockerfile
        self._extras = {extra.path: extra.content for extra in extra_files}
        self._extra_files = tuple(extra_files)
        self._chunk_size = chunk_size
        self._on_progress = on_progress
        self._on_warning = on_warning or _log_warning
        self._entries: list[ContextEntry] | None = None
        self._result: _StreamResult | None = None

    def entries(self) -> list[ContextEntry]:
        """The archive members in archive order (scanned on first call)."""
        if self._entries is None:
            _check_context_dir(self.context_dir)
            always = _always_included(self.context_dir, self._dockerfile)
            patterns = read_dockerignore(self.context_dir, dockerfile=self._dockerfile)
            matcher = PatternMatcher(patterns)
            disk = _walk(str(self.context_dir), matcher, always, self._on_warning)
            self._entries = _with_extras(disk, self._extra_files)
        return list(self._entries)

    @property
    def files(self) -> int:
        return sum(1 for entry in self.entries() if entry.kind is EntryKind.FILE)

    @property
    def uncompressed_bytes(self) -> int:
        """The sum of the regular files' sizes (not the tar's length)."""
        return sum(entry.size for entry in self.entries())

    @property
    def compressed_bytes(self) -> int:
        return self._finished().compressed_bytes

    @property
    def compressed_sha256(self) -> str:
        return self._finished().compressed_sha256

    @property
    def digest(self) -> str:
        return self._finished().digest

    def split(self, part_bytes: int) -> list[ContextArchive]:
        """The context as consecutive archives of about ``part_bytes`` of file content each, or
        just this archive when it is no larger: a receiver extracts one while the next is sent.

        Extracted in order into one directory, the parts give the tree this archive gives. The
        directories come in the last part: tar creates missing parents as it goes, and a
        directory whose mode forbids writing must not exist before the files inside it. Progress
        is reported against the whole context.
        """
        if part_bytes <= 0:
            raise ValueError(f"part_bytes must be positive, got {part_bytes}")
        entries = self.entries()
        total = sum(entry.size for entry in entries)
        if total <= part_bytes:
            return [self]
        groups: list[list[ContextEntry]] = [[]]
        filled = 0
        for entry in entries:
            if entry.kind is EntryKind.DIR:
                continue
            if filled >= part_bytes:
                groups.append([])
                filled = 0
            groups[-1].append(entry)
            filled += entry.size
        groups[-1].extend(entry for entry in entries if entry.kind is EntryKind.DIR)
        parts, offset = [], 0
        for group in groups:
            parts.append(self._part(group, _shifted(self._on_progress, offset, total)))
            offset += sum(entry.size for entry in group)
        return parts

    def _part(
        self, entries: list[ContextEntry], on_progress: Callable[[int, int], None] | None
    ) -> ContextArchive:
        part = ContextArchive(
            self.context_dir,
            dockerfile=self._dockerfile,
            extra_files=self._extra_files,
            chunk_size=self._chunk_size,
            on_progress=on_progress,
            on_warning=self._on_warning,
        )
        part._entries = entries
        return part

    def tar_stream(self) -> Iterator[bytes]:
        """The uncompressed tar, piece by piece, reporting progress as files are read."""
        entries = self.entries()
        progress = _Progress(sum(e.size for e in entries), self._on_progress)
        written = 0
        with _Files(str(self.context_dir)) as files:
            for entry in entries:
                header = _header(entry)
                written += len(header)
                yield header
                if entry.kind is EntryKind.FILE:
                    for piece in self._content(entry, files):
                        progress.advance(len(piece))
                        yield piece
                    padding = -entry.size % tarfile.BLOCKSIZE
                    written += entry.size + padding
                    yield tarfile.NUL * padding
        # Two zero blocks end the archive; padding to a whole record is what tar(1) writes.
        written += 2 * tarfile.BLOCKSIZE
        yield tarfile.NUL * (2 * tarfile.BLOCKSIZE + (-written % tarfile.RECORDSIZE))
        progress.finish()

    def chunks(self) -> Generator[bytes, None, None]:
        """The gzip stream in chunks of at most ``chunk_size`` bytes."""
        self._result = None
        gzip = _ParallelGzip()
        gz_hash = hashlib.sha256()
        compressed = 0
        with contextlib.closing(gzip.stream(self.tar_stream())) as pieces:
            for chunk in _rechunk(pieces, self._chunk_size):
                gz_hash.update(chunk)
                compressed += len(chunk)
                yield chunk
        self._result = _StreamResult(
            compressed_bytes=compressed,
            compressed_sha256=gz_hash.hexdigest(),
            digest=gzip.tar_digest,
        )

    async def achunks(self) -> AsyncGenerator[bytes, None]:
        """``chunks()`` produced in a worker thread, so reading and compressing overlap I/O.

        At most a few chunks wait in between. When the generator is closed early (``aclose()``,
        e.g. through ``contextlib.aclosing``, or when it is garbage collected), the thread is
        told to stop and is joined. ``on_progress`` and ``on_warning`` are then called from that
        thread: hand their data to the loop with ``call_soon_threadsafe`` if it matters.
        """
        handoff = _Handoff(asyncio.get_running_loop())
        worker = threading.Thread(
            target=handoff.produce, args=(self.chunks,), name="kiln-context-archive", daemon=True
        )
        worker.start()
        try:
            while True:
                item = await handoff.get()
                if isinstance(item, _Failure):
                    raise item.error
                if item is None:
                    return
                yield item
        finally:
            handoff.stop()
            await asyncio.to_thread(worker.join)

    def _finished(self) -> _StreamResult:
        if self._result is None:
            raise RuntimeError("the archive stream has not been fully consumed yet")
        return self._result

    def _content(self, entry: ContextEntry, files: _Files) -> Iterator[bytes]:
        if entry.path in self._extras:
            yield self._extras[entry.path]
        else:
            yield from _read_file(files, entry)


def _log_warning(message: str) -> None:
    _log.warning("context_entry_skipped", detail=message)


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
        rel = f"{current.rel}{_PATH_SEP}{name}" if current.rel else name
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
    prefix = rel_dir + _PATH_SEP
    return matcher.may_include_beneath(rel_dir) or any(p.startswith(prefix) for p in always)


def _list_dir(root: str, rel_dir: str) -> list[tuple[str, os.stat_result]]:
    """Names and lstat results of one directory, sorted by name."""
    where = os.path.join(root, rel_dir)
    try:
        with os.scandir(where) as listing:
            found = [(e.name, e.stat(follow_symlinks=False)) for e in listing]
        return sorted(found, key=lambda item: item[0])
    except FileNotFoundError as exc:
        raise _vanished(rel_dir or ".") from exc
    except PermissionError as exc:
        raise _unreadable(rel_dir or ".", exc) from exc
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
            raise _unreadable(rel, None)
        return ContextEntry(rel, EntryKind.FILE, st.st_size, mode)
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(os.path.join(root, rel))
        except FileNotFoundError as exc:
            raise _vanished(rel) from exc
        except OSError as exc:  # /proc/1/cwd: EACCES even for root
            raise _unreadable(rel, exc) from exc
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
            raise _collision(extra.path, f"the {kinds[extra.path]} {extra.path!r}")
        parts = extra.path.split(_PATH_SEP)
        for depth in range(1, len(parts)):
            parent = _PATH_SEP.join(parts[:depth])
            kind = kinds.get(parent)
            if kind is None:
                # Explicit parents keep their mode independent of the extracting user's umask.
                kinds[parent] = EntryKind.DIR
                added.append(ContextEntry(parent, EntryKind.DIR, 0, _IMPLIED_DIR_MODE))
            elif kind is not EntryKind.DIR:
                raise _collision(extra.path, f"the {kind} {parent!r}")
        kinds[extra.path] = EntryKind.FILE
        mode = extra.mode & _EXTRA_MODE_MASK
        added.append(ContextEntry(extra.path, EntryKind.FILE, len(extra.content), mode))
    return sorted(disk + added, key=lambda e: e.path)


_KIND_TYPE = {
    EntryKind.FILE: tarfile.REGTYPE,
    EntryKind.DIR: tarfile.DIRTYPE,
    EntryKind.SYMLINK: tarfile.SYMTYPE,
}
# surrogateescape round-trips file names that are not valid UTF-8 byte for byte.
_NAME_ENCODING = ("utf-8", "surrogateescape")
_NAME_FIELD = 100
# The size field holds 11 octal digits; larger sizes need GNU's base-256 form.
_OCTAL_SIZE_LIMIT = 8**11
_CHECKSUM_FIELD = slice(148, 156)


def _header(entry: ContextEntry) -> bytes:
    """The entry's GNU tar header, byte-identical to ``tarfile``'s own.

    Headers are written here for the common case because ``TarInfo.tobuf`` dominates the time
    of archiving many small files; long names and huge sizes are left to ``tarfile``.
    """
    name = entry.path.encode(*_NAME_ENCODING) + (b"/" if entry.kind is EntryKind.DIR else b"")
    link = entry.link_target.encode(*_NAME_ENCODING)
    too_long = len(name) > _NAME_FIELD or len(link) > _NAME_FIELD
    if too_long or entry.size >= _OCTAL_SIZE_LIMIT:
        return _tarfile_header(entry)
    block = bytearray(tarfile.BLOCKSIZE)
    block[0 : len(name)] = name
    # mode, uid 0, gid 0, size, mtime 0, checksum placeholder (spaces), type, link name, magic;
    # user and group names and the device fields stay empty (all NUL).
    fields = b"%07o\0" % entry.mode + b"0000000\0" * 2 + b"%011o\0" % entry.size
    fields += b"00000000000\0" + b" " * 8 + _KIND_TYPE[entry.kind]
    block[100 : 100 + len(fields)] = fields
    block[157 : 157 + len(link)] = link
    block[257:265] = tarfile.GNU_MAGIC
    block[_CHECKSUM_FIELD] = b"%06o\0 " % sum(block)
    return bytes(block)


def _tarfile_header(entry: ContextEntry) -> bytes:
    info = tarfile.TarInfo(entry.path)
    info.mode = entry.mode
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    info.type = _KIND_TYPE[entry.kind]
    info.size = entry.size
    info.linkname = entry.link_target
    return info.tobuf(tarfile.GNU_FORMAT, *_NAME_ENCODING)


# Every directory on the way to a file is opened relative to its parent without following a
# link: a parent swapped for a symlink after the walk cannot lead the read out of the context
# (O_NOFOLLOW on the file alone guards only the last component).
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NOFOLLOW: a file swapped for a symlink since the walk must not upload the link's target.
# O_NONBLOCK: a file swapped for a FIFO must not hang the open.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class _Files:
    """Opens the context's files through directory descriptors, one component at a time.

    The descriptor of the last directory used is kept, since the archive reads a directory's
    files one after another; at most three descriptors are open at once, however deep the tree.
    """

    def __init__(self, root: str) -> None:
        self._root = root
        self._root_fd = -1
        self._dir_rel = ""
        self._dir_fd = -1

    def __enter__(self) -> _Files:
        try:
            self._root_fd = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise _vanished(".") from exc
        except PermissionError as exc:
            raise _unreadable(".", exc) from exc
        except OSError as exc:
            raise _changed(".", "it is no longer a directory") from exc
        return self

    def __exit__(self, *_exc: object) -> None:
        self._forget_dir()
        os.close(self._root_fd)

    def open(self, rel: str) -> int:
        """A descriptor for the regular file (or whatever now stands) at ``rel``."""
        parent, _sep, name = rel.rpartition(_PATH_SEP)
        return os.open(name, _FILE_FLAGS, dir_fd=self._dir(parent))

    def _dir(self, rel_dir: str) -> int:
        if not rel_dir:
            return self._root_fd
        if rel_dir != self._dir_rel or self._dir_fd < 0:
            self._forget_dir()
            self._dir_fd = _open_dir_below(self._root_fd, rel_dir)
            self._dir_rel = rel_dir
        return self._dir_fd

    def _forget_dir(self) -> None:
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
        self._dir_fd, self._dir_rel = -1, ""


def _open_dir_below(root_fd: int, rel_dir: str) -> int:
    """Open ``rel_dir`` under ``root_fd`` component by component, never through a link."""
    current = root_fd
    done: list[str] = []
    try:
        for part in rel_dir.split(_PATH_SEP):
            done.append(part)
            try:
                opened = os.open(part, _DIR_FLAGS, dir_fd=current)
            except FileNotFoundError as exc:
                raise _vanished(_PATH_SEP.join(done)) from exc
            except PermissionError as exc:
                raise _unreadable(_PATH_SEP.join(done), exc) from exc
            except OSError as exc:  # ELOOP, ENOTDIR: a link or a file stands there now
                where = _PATH_SEP.join(done)
                raise _changed(where, "it is no longer a directory") from exc
            if current != root_fd:
                os.close(current)
            current = opened
    except BaseException:
        if current != root_fd:
            os.close(current)
        raise
    return current


def _read_file(files: _Files, entry: ContextEntry) -> Iterator[bytes]:
    """The file's bytes in pieces, failing if it is no longer what the walk saw."""
    try:
        fd = files.open(entry.path)
    except FileNotFoundError as exc:
        raise _vanished(entry.path) from exc
    except PermissionError as exc:
        raise _unreadable(entry.path, exc) from exc
    except OSError as exc:
        raise _changed(entry.path, "it is no longer a regular file") from exc
    with open(fd, "rb", buffering=0) as handle:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _changed(entry.path, "it is no longer a regular file")
        if st.st_size != entry.size:
            raise _changed(entry.path, f"its size went from {entry.size} to {st.st_size} bytes")
        remaining = entry.size
        while remaining:
            piece = _read(handle, entry.path, min(_READ_SIZE, remaining))
            if not piece:
                raise _changed(entry.path, f"it shrank below {entry.size} bytes")
            remaining -= len(piece)
            yield piece
        if _read(handle, entry.path, 1):
            raise _changed(entry.path, f"it grew beyond {entry.size} bytes")


def _read(handle: io.FileIO, rel: str, size: int) -> bytes:
    try:
        # None means "would block", which a regular file never does: treat it as no data.
        return handle.read(size) or b""
    except OSError as exc:
        raise _unreadable(rel, exc) from exc


def _rechunk(pieces: Iterable[bytes], size: int) -> Iterator[bytes]:
    """The same bytes regrouped into pieces of exactly ``size`` (the last may be shorter)."""
    pending = bytearray()
    for piece in pieces:
        pending += piece
        while len(pending) >= size:
            yield bytes(pending[:size])
            del pending[:size]
    if pending:
        yield bytes(pending)


class _ParallelGzip:
    """One gzip member compressed in parallel blocks, pigz's way, with deterministic output.

    Each block of the input is deflated on its own thread as a raw deflate stream primed with
    the 32 KiB that precede it and ended by a sync flush (byte-aligned, not final); the pieces
    concatenate into one valid deflate stream, closed by an empty final block. The output depends
    only on the input and the block size, never on timing or thread count.
    """

    def __init__(self) -> None:
        self._tar_hash = hashlib.sha256()
        self._crc = 0
        self._length = 0

    @property
    def tar_digest(self) -> str:
        return f"sha256:{self._tar_hash.hexdigest()}"

    def stream(self, data: Iterable[bytes]) -> Generator[bytes, None, None]:
        yield _GZIP_HEADER
        blocks = _rechunk(data, _DEFLATE_BLOCK)
        head = list(itertools.islice(blocks, 2))
        if len(head) < 2:
            # One block, as most contexts are: a thread pool would cost more than it saves (on a
            # busy machine each hand-off to a new thread waits for the scheduler). Same bytes.
            for block in head:
                self._account(block)
                yield _deflate_block(block, b"")
        else:
            yield from self._parallel(itertools.chain(head, blocks))
        yield _DEFLATE_END + struct.pack("<II", self._crc, self._length & _ISIZE_MASK)

    def _parallel(self, blocks: Iterable[bytes]) -> Generator[bytes, None, None]:
        threads = min(os.cpu_count() or 1, _MAX_DEFLATE_THREADS)
        with ThreadPoolExecutor(threads, thread_name_prefix=_GZIP_THREAD_NAME) as pool:
            # At most one block per thread plus one waiting: bounded memory, all threads busy.
            running: deque[Future[bytes]] = deque()
            window = b""
            try:
                for block in blocks:
                    self._account(block)
                    running.append(pool.submit(_deflate_block, block, window))
                    window = _next_window(window, block)
                    while len(running) > threads:
                        yield running.popleft().result()
                while running:
                    yield running.popleft().result()
            finally:
                for future in running:
                    future.cancel()

    def _account(self, block: bytes) -> None:
        self._tar_hash.update(block)
        self._crc = zlib.crc32(block, self._crc)
        self._length += len(block)


def _deflate_block(block: bytes, window: bytes) -> bytes:
    level = _GZIP_LEVEL if _compressible(block) else _STORED
    if window:
        deflate = zlib.compressobj(level, zlib.DEFLATED, _RAW_DEFLATE, zdict=window)
    else:
        deflate = zlib.compressobj(level, zlib.DEFLATED, _RAW_DEFLATE)
    return deflate.compress(block) + deflate.flush(zlib.Z_SYNC_FLUSH)


def _compressible(block: bytes) -> bool:
    """Whether any of a few samples spread over the block deflates noticeably (cheap: ~3 %
    of deflating the block, and it depends on the bytes only, so the output stays deterministic)."""
    view = memoryview(block)
    step = max(1, len(block) // _SAMPLES)
    for start in range(0, len(block), step):
        sample = view[start : start + _SAMPLE_BYTES]
        if len(zlib.compress(sample, _GZIP_LEVEL)) < _INCOMPRESSIBLE_RATIO * len(sample):
            return True
    return False


def _next_window(window: bytes, block: bytes) -> bytes:
    """The last 32 KiB of the stream so far."""
    if len(block) >= _DEFLATE_WINDOW:
        return block[-_DEFLATE_WINDOW:]
    return (window + block)[-_DEFLATE_WINDOW:]


def _vanished(rel: str) -> ContextError:
    return ContextError(
        f"{rel} disappeared from the build context while it was being archived",
        hint="stop whatever is changing the context during the build, or exclude that path in "
        ".dockerignore",
    )


def _unreadable(rel: str, exc: OSError | None) -> ContextError:
    reason = exc.strerror if exc is not None and exc.strerror else "permission denied"
    return ContextError(
        f"cannot read {rel} in the build context: {reason}",
        hint="make it readable by the user running kiln, or exclude it in .dockerignore",
    )


def _changed(rel: str, what: str) -> ContextError:
    return ContextError(
        f"{rel} changed while the build context was being archived: {what}",
        hint="stop whatever writes to the context during the build (or exclude that path in "
        ".dockerignore), then retry",
    )


def _collision(path: str, other: str) -> ContextError:
    return ContextError(
        f"extra context file {path!r} collides with {other} in the build context",
        hint="give the extra file another path, or exclude the clashing path in .dockerignore",
    )


def _shifted(
    report: Callable[[int, int], None] | None, offset: int, total: int
) -> Callable[[int, int], None] | None:
    """A part's progress as progress through the whole context."""
    if report is None:
        return None
    return lambda done, _part_total: report(offset + done, total)


class _Progress:
    """Reports at 0 and at the end, whenever the whole percent rises, and every 64 MiB."""

    def __init__(self, total: int, callback: Callable[[int, int], None] | None) -> None:
        self._total = total
        self._callback = callback
        self._done = 0
        self._reported_done = 0
        self._reported_percent = self._percent()
        self._report()

    def advance(self, n: int) -> None:
        self._done += n
        percent = self._percent()
        if percent > self._reported_percent or self._done - self._reported_done >= _PROGRESS_EVERY:
            self._reported_percent = percent
            self._report()

    def finish(self) -> None:
        if self._reported_done != self._total or self._total == 0:
            self._report()

    def _percent(self) -> int:
        return self._done * 100 // self._total if self._total else 0

    def _report(self) -> None:
        self._reported_done = self._done
        if self._callback is not None:
            self._callback(self._done, self._total)


@attrs.frozen
class _Failure:
    error: BaseException


class _Handoff:
    """A bounded queue from the archiving thread to the event loop, with a stop switch."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: queue.Queue[bytes | _Failure | None] = queue.Queue(maxsize=_QUEUE_CHUNKS)
        self._ready = asyncio.Event()
        self._stopped = threading.Event()

    def produce(self, source: Callable[[], Generator[bytes, None, None]]) -> None:
        """Thread body: forward every chunk, then None (the end) or the failure."""
        try:
            chunks = source()
            try:
                for chunk in chunks:
                    if self._stopped.is_set():
                        return
                    self._put(chunk)
            finally:
                chunks.close()
            self._put(None)
        except Exception as exc:
            self._put(_Failure(exc))

    async def get(self) -> bytes | _Failure | None:
        while True:
            # Clear before looking, so a put that lands in between still wakes the wait.
            self._ready.clear()
            try:
                return self._queue.get_nowait()
            except queue.Empty:
                await self._ready.wait()

    def stop(self) -> None:
        """Ask the thread to stop and unblock it; it then ends within one chunk's work."""
        self._stopped.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def _put(self, item: bytes | _Failure | None) -> None:
        # Blocks while the queue is full; stop() empties it, so a stopped consumer frees us.
        self._queue.put(item)
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:
            # The event loop is gone: nobody will read further.
            self._stopped.set()
