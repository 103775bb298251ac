"""The SSE reader: heartbeats, multi-line data, CRLF, events split anywhere, unparsable data."""

from collections.abc import AsyncIterator, Sequence
from itertools import pairwise
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.api._sse import iter_event_data, iter_json_events

STREAM = (
    b": heartbeat\n\n"
    b'event: output\ndata: {"line": "one", "timestamp": 1}\n\n'
    b"data: not json\n\n"
    b'data: {"line":\ndata: "two", "timestamp": 2}\n\n'
    b'id: 3\r\ndata: {"line": "tr\xc3\xa8s", "timestamp": 3}\r\n\r\n'
    b'data:{"line": "four", "timestamp": 4}\r\r'
)
EXPECTED = [
    {"line": "one", "timestamp": 1},
    {"line": "two", "timestamp": 2},
    {"line": "très", "timestamp": 3},
    {"line": "four", "timestamp": 4},
]


async def chunks(parts: Sequence[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def events(*parts: bytes) -> list[Any]:
    return [event async for event in iter_json_events(chunks(parts))]


async def data_of(*parts: bytes) -> list[str]:
    return [data async for data in iter_event_data(chunks(parts))]


async def test_whole_stream() -> None:
    assert await events(STREAM) == EXPECTED


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
async def test_any_chunking_gives_the_same_events(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    parts = [STREAM[start:end] for start, end in pairwise(bounds)]
    assert await events(*parts) == EXPECTED


async def test_byte_by_byte_including_split_crlf_and_utf8() -> None:
    assert await events(*(STREAM[i : i + 1] for i in range(len(STREAM)))) == EXPECTED


async def test_multi_line_data_is_joined_with_newlines() -> None:
    assert await data_of(b"data: a\ndata: b\ndata:  c\n\n") == ["a\nb\n c"]


async def test_comment_only_and_field_only_events_carry_no_data() -> None:
    assert await data_of(b":ping\n\nevent: x\n\nretry: 10\n\n") == []


async def test_last_event_without_blank_line_still_counts() -> None:
    assert await events(b'data: {"a": 1}\n') == [{"a": 1}]


async def test_unterminated_tail_is_dropped() -> None:
    assert await events(b'data: {"a": 1}\n\ndata: {"a": 2}') == [{"a": 1}]


async def test_byte_order_mark_is_ignored() -> None:
    assert await events(b'\xef\xbb\xbfdata: {"a": 1}\n\n') == [{"a": 1}]


async def test_empty_stream() -> None:
    assert await events() == []
