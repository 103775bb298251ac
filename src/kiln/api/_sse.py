"""A server-sent-events reader for the proxy's output streams (docs/protocol.md#server-sent-events).

Only `data:` matters (event names, ids and retry hints are ignored), and each event's data is one
JSON document. The reader copes with what real streams do: heartbeat comments, multi-line data,
CRLF or bare CR line ends, and events split at any byte across network chunks.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

DATA_FIELD = "data"
COMMENT_PREFIX = ":"
BYTE_ORDER_MARK = "\ufeff"
# The longest line or event kept in memory: a build log line is far shorter, and a server that
# never ends a line must not fill the memory of the process reading it.
MAX_EVENT_CHARS = 4 << 20


class LineTooLong(Exception):
    """A stream line or event longer than MAX_EVENT_CHARS; the caller names the stream."""


async def iter_lines(chunks: AsyncIterable[bytes]) -> AsyncIterator[str]:
    """Lines of a byte stream, split on LF, CRLF or CR; an unterminated tail is dropped, since a
    stream cut mid-line carries half an event. A line past MAX_EVENT_CHARS raises LineTooLong."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    async for chunk in chunks:
        pending += decoder.decode(chunk)
        lines, pending = _split_complete(pending)
        for line in lines:
            yield _bounded(line)
        _bounded(pending)
    lines, _tail = _split_complete(pending + decoder.decode(b"", final=True), final=True)
    for line in lines:
        yield line


def _split_complete(text: str, *, final: bool = False) -> tuple[list[str], str]:
    lines: list[str] = []
    start = 0
    while True:
        cr, lf = text.find("\r", start), text.find("\n", start)
        ends = [index for index in (cr, lf) if index >= 0]
        if not ends:
            return lines, text[start:]
        end = min(ends)
        if text[end] == "\r":
            if end + 1 == len(text) and not final:
                # A CR at the very end may be the first half of a CRLF: wait for the next chunk.
                return lines, text[start:]
            lines.append(text[start:end])
            start = end + 2 if text.startswith("\n", end + 1) else end + 1
        else:
            lines.append(text[start:end])
            start = end + 1


async def iter_event_data(chunks: AsyncIterable[bytes]) -> AsyncIterator[str]:
    """The data of each event: its `data:` lines joined by newlines; data-less events skipped."""
    data: list[str] = []
    size = 0
    first = True
    async for raw_line in iter_lines(chunks):
        line = raw_line.removeprefix(BYTE_ORDER_MARK) if first else raw_line
        first = False
        if not line:
            if data:
                yield "\n".join(data)
            data, size = [], 0
            continue
        if line.startswith(COMMENT_PREFIX):
            continue
        name, _colon, value = line.partition(":")
        if name == DATA_FIELD:
            data.append(value.removeprefix(" "))
            size += len(data[-1])
            _bounded_size(size)
    # A server that closes right after its last data line, without the blank line, still meant
    # that event; every line here was complete, so nothing half-sent is passed on.
    if data:
        yield "\n".join(data)


async def iter_json_events(chunks: AsyncIterable[bytes]) -> AsyncIterator[Any]:
    """Each event's data as JSON; unparsable events (heartbeats, noise) are skipped
    (docs/protocol.md#server-sent-events)."""
    async for data in iter_event_data(chunks):
        try:
            yield json.loads(data)
        except ValueError:
            continue


def _bounded(line: str) -> str:
    _bounded_size(len(line))
    return line


def _bounded_size(size: int) -> None:
    if size > MAX_EVENT_CHARS:
        raise LineTooLong(f"a stream line or event longer than {MAX_EVENT_CHARS >> 20} MiB")
