"""A server-sent-events reader for the proxy's output streams (docs/protocol.md#server-sent-events).

Only `data:` matters (event names, ids and retry hints are ignored), and each event's data is one
JSON document. The reader copes with what real streams do: heartbeat comments, multi-line data,
CRLF or bare CR line ends, and events split at any byte across network chunks.

A fast builder log is tens of thousands of events a second, so the reader works a chunk at a
time: every complete event of a chunk is parsed in one pass and handed on as one list
(:func:`iter_json_batches`), instead of a trip through a chain of generators per line.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

DATA_FIELD = "data"
DATA_PREFIX = DATA_FIELD + ":"
COMMENT_PREFIX = ":"
BYTE_ORDER_MARK = "\ufeff"
# The longest line or event kept in memory: a build log line is far shorter, and a server that
# never ends a line must not fill the memory of the process reading it.
MAX_EVENT_CHARS = 4 << 20

_decoder = json.JSONDecoder()
_decode_json = _decoder.decode
_scan_json = _decoder.raw_decode


class LineTooLong(Exception):
    """A stream line or event longer than MAX_EVENT_CHARS; the caller names the stream."""


class EventReader:
    """The incremental parser: bytes in, in chunks cut anywhere; the data of every event they
    complete out, in order. Lines end with LF, CRLF or CR; an unterminated tail at the end is
    dropped (a stream cut mid-line carries half an event). A line or an event's data past
    MAX_EVENT_CHARS raises LineTooLong."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # The start of a line whose end has not come yet.
        self._pending = ""
        # The data lines of the event being read, and their length.
        self._data: list[str] = []
        self._size = 0
        self._first = True

    def feed(self, chunk: bytes) -> list[str]:
        """The data of the events this chunk completes."""
        text = self._decoder.decode(chunk)
        if self._pending:
            text = self._pending + text
        lines, self._pending = _split_complete(text)
        _bounded_size(len(self._pending))
        if len(text) > MAX_EVENT_CHARS:
            for line in lines:
                _bounded_size(len(line))
        return self._events(lines)

    def close(self) -> list[str]:
        """The end of the stream: the events its last complete lines make. A server that closes
        right after its last data line, without the blank line, still meant that event; every
        line here was complete, so nothing half-sent is passed on."""
        text = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        lines, _tail = _split_complete(text, final=True)
        events = self._events(lines)
        if self._data:
            events.append("\n".join(self._data))
            self._data, self._size = [], 0
        return events

    def _events(self, lines: list[str]) -> list[str]:
        if self._first and lines:
            lines[0] = lines[0].removeprefix(BYTE_ORDER_MARK)
            self._first = False
        events: list[str] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    events.append(data[0] if len(data) == 1 else "\n".join(data))
                    data = []
                    self._size = 0
                continue
            if line.startswith(DATA_PREFIX):
                value = line[len(DATA_PREFIX) :]
                if value.startswith(" "):
                    value = value[1:]
            elif line == DATA_FIELD:
                value = ""
            else:
                # A comment (a heartbeat), or a field kiln does not use.
                continue
            data.append(value)
            self._size += len(value)
            _bounded_size(self._size)
        self._data = data
        return events


def _split_complete(text: str, *, final: bool = False) -> tuple[list[str], str]:
    """The complete lines of ``text`` and what follows the last line end."""
    if "\r" not in text:
        parts = text.split("\n")
        return parts, parts.pop()
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
    reader = EventReader()
    async for chunk in chunks:
        for data in reader.feed(chunk):
            yield data
    for data in reader.close():
        yield data


async def iter_json_batches(chunks: AsyncIterable[bytes]) -> AsyncIterator[list[Any]]:
    """Each chunk's complete events as JSON, one list per chunk that completes any; unparsable
    events (heartbeats, noise) are skipped (docs/protocol.md#server-sent-events)."""
    reader = EventReader()
    async for chunk in chunks:
        batch = parse_json_events(reader.feed(chunk))
        if batch:
            yield batch
    batch = parse_json_events(reader.close())
    if batch:
        yield batch


async def iter_json_events(chunks: AsyncIterable[bytes]) -> AsyncIterator[Any]:
    """Each event's data as JSON, one at a time; unparsable events skipped."""
    async for batch in iter_json_batches(chunks):
        for data in batch:
            yield data


def parse_json_events(texts: list[str]) -> list[Any]:
    """Events' data as JSON, as ``json.loads`` reads it; unparsable ones (heartbeats, noise) are
    skipped. A document that fills its text, the usual case, is read by the scanner alone; any
    other text (surrounding whitespace, extra data, an error) takes ``json.loads``' way."""
    parsed: list[Any] = []
    append = parsed.append
    for text in texts:
        try:
            value, end = _scan_json(text)
            if end == len(text):
                append(value)
                continue
        except ValueError:
            pass
        try:
            append(_decode_json(text))
        except ValueError:
            continue
    return parsed


def _bounded_size(size: int) -> None:
    if size > MAX_EVENT_CHARS:
        raise LineTooLong(f"a stream line or event longer than {MAX_EVENT_CHARS >> 20} MiB")
