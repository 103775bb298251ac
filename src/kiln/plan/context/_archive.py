"""The context as a gzip tar stream: walked, read, framed and compressed on the way."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import AsyncGenerator, Callable, Generator, Iterator, Sequence
from pathlib import Path

import attrs

from kiln.plan.context._entries import ContextEntry, EntryKind, ExtraFile
from kiln.plan.context._gzip import ParallelGzip, rechunk
from kiln.plan.context._handoff import in_thread
from kiln.plan.context._progress import Progress, shifted
from kiln.plan.context._read import Files, read_file
from kiln.plan.context._tar import tar_stream
from kiln.plan.context._walk import log_warning, scan

DEFAULT_CHUNK_SIZE = 1 << 20
_ARCHIVE_THREAD_NAME = "kiln-context-archive"


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
        self._on_warning = on_warning or log_warning
        self._entries: list[ContextEntry] | None = None
        self._result: _StreamResult | None = None

    def entries(self) -> list[ContextEntry]:
        """The archive members in archive order (scanned on first call)."""
        if self._entries is None:
            self._entries = scan(
                self.context_dir, self._dockerfile, self._extra_files, self._on_warning
            )
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
            parts.append(self._part(group, shifted(self._on_progress, offset, total)))
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
        progress = Progress(sum(e.size for e in entries), self._on_progress)
        with Files(str(self.context_dir)) as files:

            def content(entry: ContextEntry) -> Iterator[bytes]:
                for piece in self._content(entry, files):
                    progress.advance(len(piece))
                    yield piece

            yield from tar_stream(entries, content)
        progress.finish()

    def chunks(self) -> Generator[bytes, None, None]:
        """The gzip stream in chunks of at most ``chunk_size`` bytes."""
        self._result = None
        gzip = ParallelGzip()
        gz_hash = hashlib.sha256()
        compressed = 0
        with contextlib.closing(gzip.stream(self.tar_stream())) as pieces:
            for chunk in rechunk(pieces, self._chunk_size):
                gz_hash.update(chunk)
                compressed += len(chunk)
                yield chunk
        self._result = _StreamResult(
            compressed_bytes=compressed,
            compressed_sha256=gz_hash.hexdigest(),
            digest=gzip.tar_digest,
        )

    def achunks(self) -> AsyncGenerator[bytes, None]:
        """``chunks()`` produced in a worker thread, so reading and compressing overlap I/O.

        At most a few chunks wait in between. When the generator is closed early (``aclose()``,
        e.g. through ``contextlib.aclosing``, or when it is garbage collected), the thread is
        told to stop and is joined. ``on_progress`` and ``on_warning`` are then called from that
        thread: hand their data to the loop with ``call_soon_threadsafe`` if it matters.
        """
        return in_thread(self.chunks, name=_ARCHIVE_THREAD_NAME)

    def _finished(self) -> _StreamResult:
        if self._result is None:
            raise RuntimeError("the archive stream has not been fully consumed yet")
        return self._result

    def _content(self, entry: ContextEntry, files: Files) -> Iterator[bytes]:
        if entry.path in self._extras:
            yield self._extras[entry.path]
        else:
            yield from read_file(files, entry)
