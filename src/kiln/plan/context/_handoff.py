"""Handing chunks made on a worker thread to the event loop, with a bounded queue and a stop."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncGenerator, Callable, Generator

import attrs

# Chunks waiting between the archiving thread and the uploader: enough to keep both busy.
_QUEUE_CHUNKS = 4


async def in_thread(
    source: Callable[[], Generator[bytes, None, None]], *, name: str
) -> AsyncGenerator[bytes, None]:
    """``source()``'s chunks, produced on a thread called ``name``; closing stops and joins it."""
    handoff = _Handoff(asyncio.get_running_loop())
    worker = threading.Thread(target=handoff.produce, args=(source,), name=name, daemon=True)
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
