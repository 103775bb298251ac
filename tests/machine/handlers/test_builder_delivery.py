"""The builder's log lines, delivered a batch at a time: the diagnostics see what each line says,
and the lines go out in order."""

from __future__ import annotations

from kiln.machine import BuildLogEvent, BuildState, Event, Services, load_machine_spec
from kiln.machine.handlers import builder
from kiln.plan import plan_import


def _deliver(lines: list[tuple[str, str]]) -> tuple[BuildState, list[Event]]:
    events: list[Event] = []
    state = BuildState(plan=plan_import("python:3.12-slim"))
    builder._deliver(state, Services(spec=load_machine_spec(), emit_event=events.append), lines)
    return state, events


def test_a_batch_delivers_its_lines_in_order_with_their_streams() -> None:
    lines = [(f"line {n}", "stderr" if n % 3 else "stdout") for n in range(50)]
    _state, events = _deliver(lines)
    assert events == [BuildLogEvent(line, stream) for line, stream in lines]


def test_the_last_refused_image_of_a_batch_is_the_one_kept() -> None:
    state, _events = _deliver(
        [
            ("Error: pull access denied for first/image, repository does not exist", "stderr"),
            ("an unrelated line", "stdout"),
            ("Error: pull access denied for second/image", "stderr"),
            ("and another", "stdout"),
        ]
    )
    assert state.pull_denied_image == "second/image"


def test_a_disk_error_anywhere_in_a_batch_is_seen_but_no_marker_spans_two_lines() -> None:
    state, _events = _deliver([("ok", "stdout"), ("write: ENOSPC", "stderr"), ("ok", "stdout")])
    assert state.disk_error_seen
    state, _events = _deliver([("pull access denied", "stdout"), ("for x", "stdout")])
    assert state.pull_denied_image is None
    state, _events = _deliver([("no", "stdout"), ("space", "stdout")])
    assert not state.disk_error_seen


def test_an_empty_batch_delivers_nothing() -> None:
    state, events = _deliver([])
    assert events == []
    assert not state.disk_error_seen
