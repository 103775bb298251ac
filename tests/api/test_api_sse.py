"""The SSE reader: heartbeats, multi-line data, CRLF, events split anywhere, unparsable data."""

import json
from collections.abc import AsyncIterator, Sequence
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.api._sse import (
    MAX_EVENT_CHARS,
    EventReader,
    LineTooLong,
    iter_event_data,
    iter_json_batches,
    iter_json_events,
    parse_json_events,
)

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


# --- a chunk at a time (a fast builder log: many events per read) ---------------------------------


async def batches(*parts: bytes) -> list[list[Any]]:
    return [batch async for batch in iter_json_batches(chunks(parts))]


async def test_a_chunk_with_many_events_gives_them_in_one_list_in_order() -> None:
    body = b"".join(b'data: {"n": %d}\n\n' % n for n in range(1000))
    assert await batches(body) == [[{"n": n} for n in range(1000)]]


async def test_an_event_split_across_chunks_comes_with_the_chunk_that_completes_it() -> None:
    assert await batches(b'data: {"n": 1}\n\ndata: {"n"', b": 2}\n", b'\ndata: {"n": 3}\n\n') == [
        [{"n": 1}],
        [{"n": 2}, {"n": 3}],
    ]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
async def test_lists_hold_every_event_in_order_across_chunk_boundaries(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    parts = [STREAM[start:end] for start, end in pairwise(bounds)]
    got = await batches(*parts)
    assert all(got), "no empty list is handed on"
    assert [event for batch in got for event in batch] == EXPECTED


def test_the_reader_hands_back_what_each_chunk_completes() -> None:
    reader = EventReader()
    assert reader.feed(b"data: a\n\nda") == ["a"]
    assert reader.feed(b"ta: b\r") == []
    assert reader.feed(b"\ndata: c\n\n: ping\n\n") == ["b\nc"]
    assert reader.feed(b"data: d\n") == []
    assert reader.close() == ["d"]


def test_a_line_past_the_bound_is_refused_whether_complete_or_not() -> None:
    long_line = b"data: " + b"x" * (MAX_EVENT_CHARS + 1)
    with pytest.raises(LineTooLong):
        EventReader().feed(long_line)
    with pytest.raises(LineTooLong):
        EventReader().feed(long_line + b"\n\n")
    reader = EventReader()
    half = b"x" * (MAX_EVENT_CHARS // 2 + 1)
    with pytest.raises(LineTooLong):
        reader.feed(b"data: " + half + b"\ndata: " + half + b"\n")


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=12),
        st.sampled_from([' {"a": 1}', '{"a": 1} ', '{"a": 1}x', "[1] [2]", "1.5e3", '"\\u00e9"']),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=4),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
            max_leaves=6,
        ).map(json.dumps),
    )
)
def test_events_are_parsed_as_json_loads_reads_them(text: str) -> None:
    try:
        expected = [json.loads(text)]
    except ValueError:
        expected = []
    # Compared as text: "NaN" is a JSON value json.loads reads, and not equal to itself.
    assert json.dumps(parse_json_events([text])) == json.dumps(expected)
