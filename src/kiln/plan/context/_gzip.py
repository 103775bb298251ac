"""One gzip member compressed in parallel blocks (pigz's scheme), with deterministic bytes."""

from __future__ import annotations

import hashlib
import itertools
import os
import struct
import zlib
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

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


def rechunk(pieces: Iterable[bytes], size: int) -> Iterator[bytes]:
    """The same bytes regrouped into pieces of exactly ``size`` (the last may be shorter)."""
    pending = bytearray()
    for piece in pieces:
        pending += piece
        while len(pending) >= size:
            yield bytes(pending[:size])
            del pending[:size]
    if pending:
        yield bytes(pending)


class ParallelGzip:
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
        blocks = rechunk(data, _DEFLATE_BLOCK)
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
