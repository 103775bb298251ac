"""The three views of a running build, fed with typed events and real build states."""

from __future__ import annotations

import io
import json
import re
import signal
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from rich.console import Console

from kiln.builds import Template
from kiln.cli._signals import cancelling_notice
from kiln.cli._view import JsonView, PlainView, RichView, View, _event_line, abort_report
from kiln.errors import BuildCancelled, BuildError, WithDiagnostics
from kiln.machine import (
    CAS_MACHINE,
    BuildLogEvent,
    BuildState,
    CasProgress,
    Event,
    StatusEvent,
    TransitionEvent,
    WarningEvent,
)
from kiln.plan import plan_import
from support.events import check_event

SANDBOX = "sbx-0123456789abcdef"
TEMPLATE = Template(id="tmpl-42", name="python", snapshot_id="snap-1", snapshot_size_bytes=4096)
WIDTH = 120
ANSI_ESCAPE = "\x1b["


# More lines than any terminal's live panel would keep: every one must stay readable.
LOG_LINES = 40
LONG_LINE = "x" * 300
# The phases of _events(), as the view names them for people (their declared labels).
LABELS = {
    "resolve_scope": "checking credentials",
    "prepare": "preparing the build",
    "create_sandbox": "creating the builder",
    "run_builder": "building the image",
    "cleanup": "removing the builder",
}


def _state(**fields: Any) -> BuildState:
    state = BuildState(plan=plan_import("python:3.12-slim"))
    for name, value in fields.items():
        setattr(state, name, value)
    return state


def _events() -> list[Event]:
    """A short build: a retried prepare, a failed builder, cleanup, with log and warning."""
    return [
        StatusEvent("Importing registry image python:3.12-slim..."),
        TransitionEvent("resolve_scope", "prepare", "succeed", 0.25),
        TransitionEvent("prepare", "prepare", "retry", 0.5),
        TransitionEvent("prepare", "create_sandbox", "succeed", 1.5),
        WarningEvent("something to know"),
        TransitionEvent("create_sandbox", "run_builder", "succeed", 2.0),
        StatusEvent("Running offline rootfs builder..."),
        *[BuildLogEvent(f"log line {n}") for n in range(LOG_LINES)],
        TransitionEvent("run_builder", "cleanup", "fail", 7.25),
    ]


def _ended() -> list[Event]:
    return [*_events(), TransitionEvent("cleanup", "failed", "fail", 0.5)]


def _feed(view: View, events: list[Event]) -> None:
    with view:
        for event in events:
            view.event(event)


def _rich() -> tuple[RichView, io.StringIO]:
    out = io.StringIO()
    return RichView(Console(file=out, width=WIDTH, color_system=None)), out


# -- JSON -----------------------------------------------------------------------------------------


def test_json_view_writes_one_object_per_line_with_the_kind_first() -> None:
    out = io.StringIO()
    view = JsonView(out)
    view.notice("hello")
    _feed(view, _events())
    lines = [check_event(json.loads(line)) for line in out.getvalue().splitlines()]
    assert len(lines) == 1 + len(_events())
    assert all(list(line)[:4] == ["type", "time", "id", "build_id"] for line in lines)
    bodies = [{k: v for k, v in line.items() if k != "time"} for line in lines]
    assert bodies[0] == {"type": "notice", "id": None, "build_id": None, "message": "hello"}
    assert bodies[2] == {
        "type": "transition",
        "id": None,
        "build_id": None,
        "source": "resolve_scope",
        "dest": "prepare",
        "trigger": "succeed",
        "duration_s": 0.25,
    }
    log_line = {"message": "log line 0", "stream": "stdout"}
    assert {"type": "build_log", "id": None, "build_id": None, **log_line} in bodies


def test_json_view_notices_name_the_build_it_follows() -> None:
    out = io.StringIO()
    view = JsonView(out)
    state = _state(build_id="build-1")
    view.follow(state)
    view.notice("hello")
    line = check_event(json.loads(out.getvalue()))
    assert (line["id"], line["build_id"]) == (state.id, "build-1")


def test_json_view_result_of_a_done_build_carries_the_template() -> None:
    out = io.StringIO()
    state = _state(outcome="done", state="done", build_id="build-1", sandbox_id=SANDBOX)
    JsonView(out).done(TEMPLATE, state)
    result = check_event(json.loads(out.getvalue()))
    assert result.pop("time")
    assert result == {
        "type": "result",
        "state": "done",
        "id": state.id,
        "name": "python",
        "build_id": "build-1",
        "sandbox_id": SANDBOX,
        "template": {
            "id": "tmpl-42",
            "name": "python",
            "snapshot_id": "snap-1",
            "snapshot_size_bytes": 4096,
            "public": False,
        },
        "cached": False,
        "error": None,
        "hint": None,
        "advice": [],
    }


def test_json_view_result_of_a_failed_build_has_error_hint_and_advice() -> None:
    out = io.StringIO()
    source = BuildError("the builder exited with status 3", hint="read the build log")
    error = WithDiagnostics(source, ["the builder was killed for lack of memory"])
    JsonView(out).failed(error, _state(outcome="failed", state="failed"))
    result = check_event(json.loads(out.getvalue()))
    assert result["state"] == "failed"
    assert result["error"].startswith("the builder exited with status 3")
    assert result["hint"] == "read the build log"
    assert result["advice"] == ["the builder was killed for lack of memory"]
    assert result["template"] is None


def test_json_view_result_of_an_aborted_cleanup_names_the_sandbox() -> None:
    out = io.StringIO()
    state = _state(state="cleanup", sandbox_id=SANDBOX)
    JsonView(out).aborted(state, embedded=False)
    result = check_event(json.loads(out.getvalue()))
    assert result["state"] == "aborted"
    assert SANDBOX in result["error"]
    assert f"kiln resume {state.id}" in result["hint"]


def test_a_failure_without_a_hint_points_at_the_build_log() -> None:
    out = io.StringIO()
    state = _state(outcome="failed", state="failed")
    JsonView(out).failed(BuildError("Command 'tl-rootfs-build' failed with exit code 3"), state)
    PlainView(out).failed(BuildError("boom"), state)
    json_line, *plain = out.getvalue().splitlines()
    assert json.loads(json_line)["hint"] == f"the build log shows what failed: kiln logs {state.id}"
    assert plain == [
        "kiln: error: boom",
        f"hint: the build log shows what failed: kiln logs {state.id}",
    ]


class _ClosedPipe(io.StringIO):
    """A stream whose reader went away after ``accepted`` writes."""

    def __init__(self, accepted: int) -> None:
        super().__init__()
        self.accepted = accepted
        self.refused = 0

    def write(self, text: str) -> int:
        if self.accepted == 0:
            self.refused += 1
            raise BrokenPipeError(32, "Broken pipe")
        self.accepted -= 1
        return super().write(text)


@pytest.mark.parametrize("make_view", [JsonView, PlainView])
def test_a_view_whose_reader_is_gone_drops_its_lines_quietly(make_view: Any) -> None:
    out = _ClosedPipe(accepted=1)
    view = make_view(out)
    view.notice("first")
    _feed(view, _events())
    view.done(TEMPLATE, _state(outcome="done"))
    assert "first" in out.getvalue()
    assert out.refused == 1  # tried once, then stopped writing


class _CountingWrites(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.mark.parametrize("make_view", [JsonView, PlainView])
def test_a_batch_of_events_is_one_write_with_the_lines_one_by_one_would_give(
    make_view: Any,
) -> None:
    events = _events()
    one_by_one, batched = io.StringIO(), _CountingWrites()
    _feed(make_view(one_by_one), events)
    with make_view(batched) as view:
        view.events(events)
    assert batched.writes == 1
    assert batched.getvalue() == one_by_one.getvalue()


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    message=st.text(),
    stream=st.sampled_from(["stdout", "stderr", "é\n"]),
    id=st.one_of(st.none(), st.text(max_size=8)),
    build_id=st.one_of(st.none(), st.text(max_size=8)),
    at=st.floats(min_value=0, max_value=4e9),
)
def test_a_build_log_line_is_written_as_the_encoder_writes_it(
    message: str, stream: str, id: str | None, build_id: str | None, at: float
) -> None:
    event = BuildLogEvent(message, stream, id=id, build_id=build_id, time=at)
    line = _event_line(event)
    assert line == json.dumps(event.to_dict(), default=str)
    assert json.loads(line) == event.to_dict()


def test_a_batch_whose_reader_is_gone_is_dropped_quietly() -> None:
    out = _ClosedPipe(accepted=0)
    view = JsonView(out)
    view.events(_events())
    view.events(_events())
    assert out.refused == 1


def test_rich_view_shows_a_batch_as_events_one_by_one() -> None:
    (one_view, one), (batch_view, batch) = _rich(), _rich()
    _feed(one_view, _events())
    with batch_view:
        batch_view.events(_events())
    assert len(_log_lines(batch.getvalue())) == LOG_LINES
    assert _log_lines(batch.getvalue()) == _log_lines(one.getvalue())


def _log_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("  | ")]


# -- abort report ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "embedded", "left"),
    [
        ({"sandbox_id": SANDBOX}, False, True),
        ({"sandbox_id": SANDBOX}, True, False),
        ({"sandbox_id": SANDBOX, "sandbox_deleted": True}, False, False),
        ({}, False, False),
    ],
)
def test_abort_report_says_a_sandbox_may_be_left_only_when_one_may(
    fields: dict[str, Any], embedded: bool, left: bool
) -> None:
    message, hint = abort_report(_state(**fields), embedded=embedded)
    assert ("may be left" in message) is left
    assert ("kiln resume" in hint) is left


# -- plain ----------------------------------------------------------------------------------------


def test_plain_view_shows_statuses_log_lines_and_warnings_but_not_transitions() -> None:
    out = io.StringIO()
    _feed(PlainView(out), _events())
    lines = out.getvalue().splitlines()
    assert lines[0] == "Importing registry image python:3.12-slim..."
    assert "warning: something to know" in lines
    assert "  | log line 0" in lines
    assert not any("resolve_scope" in line for line in lines)
    assert len(lines) == 3 + LOG_LINES


def test_plain_view_outcomes() -> None:
    out = io.StringIO()
    view = PlainView(out)
    view.failed(BuildCancelled("build was cancelled", hint="run it again"), _state())
    view.done(TEMPLATE, _state())
    view.aborted(_state(sandbox_id=SANDBOX), embedded=False)
    text = out.getvalue()
    assert "kiln: error: build was cancelled\nhint: run it again\n" in text
    assert "done: image 'python' registered as template tmpl-42 (4.0 KiB)\n" in text
    assert "  from tensorlake.sandbox import Sandbox\n" in text
    assert '  sandbox = Sandbox.create(image="python")\n' in text
    assert f"builder sandbox {SANDBOX} may be left running" in text


def test_the_summary_says_how_long_the_build_took() -> None:
    out = io.StringIO()
    PlainView(out).done(TEMPLATE, _state(created_at=time.time() - 75))
    first = out.getvalue().splitlines()[0]
    assert re.fullmatch(
        r"done: image 'python' registered as template tmpl-42 \(7\d\.\ds, 4\.0 KiB\)", first
    )


def test_plain_view_prints_a_long_log_line_whole() -> None:
    out = io.StringIO()
    _feed(PlainView(out), [BuildLogEvent(LONG_LINE)])
    assert out.getvalue() == f"  | {LONG_LINE}\n"


# -- rich -----------------------------------------------------------------------------------------


def _phase_lines(text: str) -> dict[str, str]:
    """The panel's rows by the state they show, found by its label."""
    return {
        name: line
        for line in text.splitlines()
        for name, label in LABELS.items()
        if line.split()[1:2] and line.split(maxsplit=1)[1].startswith(label + " ")
    }


def test_rich_view_shows_each_phase_with_its_time_and_attempts() -> None:
    view, out = _rich()
    _feed(view, _events())
    phases = _phase_lines(out.getvalue())
    assert list(phases) == ["resolve_scope", "prepare", "create_sandbox", "run_builder", "cleanup"]
    assert phases["resolve_scope"].split()[0] == "✓"
    assert "0.2s" in phases["resolve_scope"]
    assert "1.5s" in phases["prepare"] and "attempt 2" in phases["prepare"]
    assert phases["run_builder"].split()[0] == "✗" and "7.2s" in phases["run_builder"]
    assert phases["cleanup"].split()[0] == "›"  # still running when the view closed


def test_rich_view_marks_a_finished_cleanup_done_whatever_the_build_outcome() -> None:
    view, out = _rich()
    _feed(view, _ended())
    phases = _phase_lines(out.getvalue())
    assert phases["cleanup"].split()[0] == "✓" and "0.5s" in phases["cleanup"]
    # A final state is no phase: no row names it.
    assert not any(line.split()[1:2] == ["failed"] for line in out.getvalue().splitlines())


def test_rich_view_scrolls_every_log_line_whole_and_keeps_the_latest_status() -> None:
    view, out = _rich()
    _feed(view, [*_events(), BuildLogEvent(LONG_LINE)])
    text = out.getvalue()
    assert "Running offline rootfs builder..." in text
    assert "Importing registry image" not in text  # replaced by the later status
    shown = [n for n in range(LOG_LINES) if f"  | log line {n}\n" in text]
    assert shown == list(range(LOG_LINES))
    # Wrapped on the narrow console, but whole: nothing cut, no ellipsis.
    assert "".join(text.split()).count(LONG_LINE) == 1 and "…" not in text


def test_rich_view_names_phases_for_people() -> None:
    view, out = _rich()
    _feed(view, _events())
    text = out.getvalue()
    assert all(label in text for label in LABELS.values())
    assert "create_sandbox" not in text and "proxy_ready" not in text


def test_rich_view_prints_notices_warnings_and_outcomes_without_ansi_on_a_plain_console() -> None:
    view, out = _rich()
    view.notice("using the embedded emulator")
    _feed(view, _events())
    view.failed(BuildError("boom", hint="look"), _state())
    view.done(TEMPLATE, _state())
    text = out.getvalue()
    assert "using the embedded emulator" in text
    assert "warning: something to know" in text
    assert "kiln: error: boom\nhint: look" in text
    assert "done: image 'python' registered as template tmpl-42" in text
    assert ANSI_ESCAPE not in text


def test_rich_view_aborted_stops_the_live_panel_and_names_the_sandbox() -> None:
    view, out = _rich()
    with view:
        view.event(TransitionEvent("run_builder", "cleanup", "cancel", 3.0))
        view.aborted(_state(state="cleanup", sandbox_id=SANDBOX), embedded=False)
    text = out.getvalue()
    assert f"builder sandbox {SANDBOX} may be left running" in text
    assert _phase_lines(text)["run_builder"].split()[0] == "-"


def test_abort_report_of_a_cas_build_names_its_image_service_build() -> None:
    state = _state()
    state.machine, state.cas, state.build_id = CAS_MACHINE, CasProgress(), "build_abc"
    message, hint = abort_report(state, embedded=False)
    assert "image build build_abc may still run on the Image Service" in message
    assert f"`kiln cancel {state.id}` then `kiln resume {state.id}`" in hint
    assert "sandbox" not in message + hint
    message, hint = abort_report(state, embedded=True)
    assert hint == "nothing to clean up"
    state.build_id = None
    assert abort_report(state, embedded=False)[1] == "nothing to clean up"
    notice = cancelling_notice(signal.SIGINT, state)
    assert notice.startswith("Cancelling: cancelling its build on the Image Service")
    assert "sandbox" not in notice
