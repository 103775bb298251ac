"""How a running build is shown: a rich live view on a terminal, plain lines elsewhere, JSON lines
with ``--json``. A view receives notices, the build's typed events, and then exactly one of the
result, the error, or the news that cleanup was aborted."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from json.encoder import encode_basestring_ascii
from types import TracebackType
from typing import Any, Protocol, TextIO

import attrs
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from kiln._time import iso8601
from kiln.builds import Template
from kiln.errors import KilnError
from kiln.machine import (
    BuildLogEvent,
    BuildState,
    Event,
    StatusEvent,
    TransitionEvent,
    Trigger,
    WarningEvent,
    load_machine_spec,
)

REFRESH_PER_SECOND = 4
# What --quiet holds back, to print when the build fails: the builder's last lines (the whole
# log stays in the store: `kiln logs ID`).
QUIET_LOG_LINES = 1000
# How a finished phase is marked, by the trigger that left it.
PHASE_MARKS = {
    Trigger.SUCCEED.value: "[green]✓[/]",
    Trigger.FAIL.value: "[bold red]✗[/]",
    Trigger.CANCEL.value: "[yellow]-[/]",
    # Served from the build cache: the phase ended the build, done.
    Trigger.CACHE_HIT.value: "[green]✓[/]",
}
RUNNING_MARK = "[bold cyan]›[/]"
ABORTED = "aborted"
# The next step a done build suggests: a sandbox from the new image with Tensorlake's Python SDK
# (tensorlake.sandbox.Sandbox.create takes a registered image's name), as E2B prints one.
NEXT_STEP = """\
start a sandbox from it with the Tensorlake SDK:
  from tensorlake.sandbox import Sandbox
  sandbox = Sandbox.create(image={name})"""
BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
KIB = 1024
# The kinds of JSON line only the CLI writes, besides the library's events.
NOTICE = "notice"
RESULT = "result"


def envelope(kind: str, state: BuildState | None) -> dict[str, Any]:
    """The keys every JSON line begins with, as the library's ``event.to_dict()`` has them
    (docs/events.schema.json): the kind, the time, kiln's and the platform's build ids."""
    return {
        "type": kind,
        "time": iso8601(time.time()),
        "id": None if state is None else state.id,
        "build_id": None if state is None else state.build_id,
    }


def failure_hint(error: KilnError, state: BuildState) -> str:
    """The error's own hint; else where to read what the builder said (the log has scrolled by,
    or went to a file, by the time the error is read)."""
    return error.hint or f"the build log shows what failed: kiln logs {state.id}"


def error_text(error: KilnError, state: BuildState) -> str:
    return f"kiln: error: {error}\nhint: {failure_hint(error, state)}"


def abort_report(state: BuildState, *, embedded: bool) -> tuple[str, str]:
    """What to say when a second Ctrl-C gives up on cleanup: the message and the hint.

    The embedded emulator's sandboxes live in this process, so they end with it.
    """
    if state.cas is not None:
        # A CAS build holds no builder sandbox: what it may leave is its admitted remote build,
        # which its release state was cancelling.
        if state.build_id is None or embedded:
            return "Aborted: nothing is left running on the Image Service", "nothing to clean up"
        return (
            f"Aborted during cancel: image build {state.build_id} may still run on the Image"
            " Service",
            f"`kiln cancel {state.id}` then `kiln resume {state.id}` cancels it there",
        )
    sandbox = state.sandbox_id
    if sandbox is None or state.sandbox_deleted:
        return "Aborted: no builder sandbox is left", "nothing to clean up"
    if embedded:
        return (
            f"Aborted during cleanup: builder sandbox {sandbox} ends with the embedded emulator",
            "nothing to clean up",
        )
    return (
        f"Aborted during cleanup: builder sandbox {sandbox} may be left running",
        f"`kiln resume {state.id}` finishes the cleanup; `kiln reap` deletes it later",
    )


class View(Protocol):
    def __enter__(self) -> View: ...
    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...
    def follow(self, state: BuildState) -> None: ...
    def notice(self, message: str) -> None: ...
    def event(self, event: Event) -> None: ...
    def events(self, events: Sequence[Event]) -> None:
        """Events delivered together, in order: a view that writes them out writes them in one
        block (a fast build log is thousands of events a second)."""
        ...

    def failed(self, error: KilnError, state: BuildState) -> None: ...
    def done(self, result: Template, state: BuildState) -> None: ...
    def aborted(self, state: BuildState, *, embedded: bool) -> None: ...
    def detached(self, state: BuildState) -> None: ...


class _Lines:
    """Whole lines to a stream. Once its reader is gone (``kiln build --json | head``) the lines
    are dropped: the build still runs to its end and deletes its sandbox, and the exit code
    still tells how it went."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._gone = False

    def write(self, text: str) -> None:
        self.write_block([text])

    def write_block(self, lines: Sequence[str]) -> None:
        """Lines in one write and one flush."""
        if self._gone or not lines:
            return
        try:
            self._out.write("\n".join(lines) + "\n")
            self._out.flush()
        except BrokenPipeError:
            self._gone = True
            _point_at_devnull(self._out)


def _point_at_devnull(out: TextIO) -> None:
    """Python flushes stdout and stderr once more at exit; into a closed pipe that fails too."""
    try:
        fd = out.fileno()
    except (OSError, ValueError):  # a stream with no descriptor has nothing to flush at exit
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


class JsonView:
    """One JSON object per line on stdout; the last one is ``{"type": "result", ...}``."""

    def __init__(self, out: TextIO) -> None:
        self._out = _Lines(out)
        self._state: BuildState | None = None

    def __enter__(self) -> JsonView:
        return self

    def __exit__(self, *exc: object) -> None:
        """Every line is flushed as it is written."""

    def _write(self, data: dict[str, Any]) -> None:
        self._out.write(_encode(data))

    def follow(self, state: BuildState) -> None:
        """Notices from now on name this build."""
        self._state = state

    def notice(self, message: str) -> None:
        self._write({**envelope(NOTICE, self._state), "message": message})

    def event(self, event: Event) -> None:
        self._out.write(_event_line(event))

    def events(self, events: Sequence[Event]) -> None:
        self._out.write_block([_event_line(event) for event in events])

    def failed(self, error: KilnError, state: BuildState) -> None:
        data = _result(state.outcome or state.state, state)
        advice = getattr(error, "advice", [])
        hint = failure_hint(error, state)
        self._write({**data, "error": str(error), "hint": hint, "advice": list(advice)})

    def done(self, result: Template, state: BuildState) -> None:
        self._write({**_result(state.outcome or state.state, state), "template": result.to_dict()})

    def aborted(self, state: BuildState, *, embedded: bool) -> None:
        message, hint = abort_report(state, embedded=embedded)
        self._write({**_result(ABORTED, state), "error": message, "hint": hint})

    def detached(self, state: BuildState) -> None:
        """The build goes on elsewhere: its result line has the state it is in."""
        self._write({**_result(state.state, state), "detached": True})


# One encoder for every line: json.dumps with an argument builds a new one per call.
_encode = json.JSONEncoder(default=str).encode
_string = encode_basestring_ascii


def _event_line(event: Event) -> str:
    """An event's JSON line. A build log line, the one kind a fast builder sends by the ten
    thousand a second, is written out directly: the same text as the encoder's (the same
    string escapes, keys in ``to_dict()``'s order; tests/cli/test_views.py), without the dict
    and the encoder's walk over it (bench_logs' profile)."""
    if type(event) is not BuildLogEvent:
        return _encode(event.to_dict())
    return (
        f'{{"type": "{event.type}", "time": "{iso8601(event.time)}", '
        f'"id": {_optional(event.id)}, "build_id": {_optional(event.build_id)}, '
        f'"message": {_string(event.message)}, "stream": {_string(event.stream)}}}'
    )


def _optional(text: str | None) -> str:
    return "null" if text is None else _string(text)


def _result(outcome: str, state: BuildState) -> dict[str, Any]:
    """The result line's keys, all present whatever the outcome."""
    return {
        **envelope(RESULT, state),
        "state": outcome,
        "name": state.plan.name,
        "sandbox_id": state.sandbox_id,
        "template": None,
        # Served from the build cache: an earlier build's template, nothing built.
        "cached": state.cached_from is not None,
        "error": None,
        "hint": None,
        "advice": [],
    }


def ended_result(state: BuildState) -> dict[str, Any]:
    """The result line of a build that had already ended (``kiln resume --json`` of it)."""
    data = _result(state.outcome or state.state, state)
    if state.result is not None:
        data["template"] = Template.from_response(state.result, name=state.plan.name).to_dict()
    if state.error is not None:
        data.update(
            error=state.error.message, hint=state.error.hint, advice=list(state.error.advice)
        )
    return data


def print_detached(state: BuildState) -> None:
    """A detached build's id on stdout, as ``docker run -d`` and the official client's
    start_image_build give it."""
    print(state.id)


def refused_result(error: str, hint: str | None) -> dict[str, Any]:
    """The result line of a command that started no build: its command line, its Dockerfile
    or its context was refused (``state`` is null)."""
    return {
        **envelope(RESULT, None),
        "state": None,
        "name": None,
        "sandbox_id": None,
        "template": None,
        "error": error,
        "hint": hint,
        "advice": [],
    }


class PlainView:
    """Plain lines for logs and pipes: statuses, build log lines, warnings and the outcome."""

    def __init__(self, out: TextIO) -> None:
        self._out = _Lines(out)

    def __enter__(self) -> PlainView:
        return self

    def __exit__(self, *exc: object) -> None:
        """Every line is flushed as it is written."""

    def _line(self, text: str) -> None:
        self._out.write(text)

    def follow(self, state: BuildState) -> None:
        """Plain lines name no build."""

    def notice(self, message: str) -> None:
        self._line(message)

    def event(self, event: Event) -> None:
        self.events((event,))

    def events(self, events: Sequence[Event]) -> None:
        self._out.write_block([text for event in events if (text := _plain(event)) is not None])

    def failed(self, error: KilnError, state: BuildState) -> None:
        self._line(error_text(error, state))

    def done(self, result: Template, state: BuildState) -> None:
        self._line(done_text(result, state))

    def aborted(self, state: BuildState, *, embedded: bool) -> None:
        message, hint = abort_report(state, embedded=embedded)
        self._line(f"kiln: {message}\nhint: {hint}")

    def detached(self, state: BuildState) -> None:
        print_detached(state)


def _plain(event: Event) -> str | None:
    """An event's plain line; None for those a plain view leaves out."""
    if isinstance(event, BuildLogEvent):
        return f"  | {event.message}"
    if isinstance(event, WarningEvent):
        return f"warning: {event.message}"
    if isinstance(event, StatusEvent):
        return event.message
    return None


class QuietView:
    """``--quiet``: only the template id, on stdout, on success (``TID=$(kiln build -q .)``).
    On failure the build log and the error go to stderr, as ``docker build -q`` prints the
    output it held back."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self._out = _Lines(out)
        self._err = _Lines(err)
        self._log: deque[str] = deque(maxlen=QUIET_LOG_LINES)

    def __enter__(self) -> QuietView:
        return self

    def __exit__(self, *exc: object) -> None:
        """Every line is flushed as it is written."""

    def follow(self, state: BuildState) -> None:
        """The id is all this view prints."""

    def notice(self, message: str) -> None:
        """Notices are progress: held back."""

    def event(self, event: Event) -> None:
        if isinstance(event, BuildLogEvent):
            self._log.append(event.message)

    def events(self, events: Sequence[Event]) -> None:
        for event in events:
            self.event(event)

    def failed(self, error: KilnError, state: BuildState) -> None:
        for line in self._log:
            self._err.write(f"  | {line}")
        self._err.write(error_text(error, state))

    def done(self, result: Template, state: BuildState) -> None:
        self._out.write(result.id)

    def aborted(self, state: BuildState, *, embedded: bool) -> None:
        message, hint = abort_report(state, embedded=embedded)
        self._err.write(f"kiln: {message}\nhint: {hint}")

    def detached(self, state: BuildState) -> None:
        print_detached(state)


def done_text(result: Template, state: BuildState) -> str:
    """The summary of a done build: its template, how long it took, how big the image is, and
    the next step."""
    facts = []
    if state.created_at:
        facts.append(f"{time.time() - state.created_at:.1f}s")
    if result.snapshot_size_bytes is not None:
        facts.append(human_size(result.snapshot_size_bytes))
    took = f" ({', '.join(facts)})" if facts else ""
    line = f"done: image {result.name!r} registered as template {result.id}{took}"
    if state.cached_from is not None:
        line = (
            f"done (cached): image {result.name!r} is unchanged since build"
            f" {state.cached_from}: template {result.id} (--no-cache builds it again)"
        )
    return f"{line}\n{NEXT_STEP.format(name=json.dumps(result.name))}"


def human_size(size: int) -> str:
    """``size`` bytes in binary units, one decimal (``45.2 MiB``)."""
    if size < KIB:
        return f"{size} B"
    value = size / KIB
    for unit in BYTE_UNITS[1:-1]:
        if value < KIB:
            return f"{value:.1f} {unit}"
        value /= KIB
    return f"{value:.1f} {BYTE_UNITS[-1]}"


@attrs.define
class _Phase:
    name: str
    # How people read it (the state's declared label).
    label: str
    # When it began, on this process's monotonic clock; back-dated by the event's duration for
    # a phase entered before the view saw it (the first one, or the one a resumed build is in).
    started: float
    duration_s: float | None = None
    left_by: str | None = None
    attempts: int = 1


class RichView:
    """A live panel on stderr: each phase, named for people, with its elapsed time, and the
    current status. The build log scrolls above it, every line whole, so the terminal's
    scrollback keeps it. Rich redraws the panel from its own thread, hence the lock."""

    def __init__(self, console: Console | None = None) -> None:
        self._console = console or Console(stderr=True)
        self._lock = threading.Lock()
        self._phases: list[_Phase] = []
        self._status = "Starting..."
        spec = load_machine_spec()
        self._labels = {name: state.label for name, state in spec.states.items()}
        # The states that run a handler; the final ones do not, so they get no row.
        self._phase_names = frozenset(spec.states)
        # States whose way out says how the build went, not how they went (cleanup).
        self._left_as_entered = frozenset(
            s.name for s in spec.states.values() if s.leaves_as_entered
        )
        self._live = Live(
            console=self._console,
            get_renderable=self._render,
            refresh_per_second=REFRESH_PER_SECOND,
        )

    def __enter__(self) -> RichView:
        self._live.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._live.stop()

    def follow(self, state: BuildState) -> None:
        """The live view names no build."""

    def notice(self, message: str) -> None:
        self._console.print(Text(message, style="yellow"))

    def event(self, event: Event) -> None:
        self.events((event,))

    def events(self, events: Sequence[Event]) -> None:
        for event in events:
            self._show(event)
        self._live.refresh()

    def _show(self, event: Event) -> None:
        with self._lock:
            if isinstance(event, TransitionEvent):
                self._transition(event)
            elif isinstance(event, StatusEvent):
                self._status = event.message
        if isinstance(event, BuildLogEvent):
            self._console.print(Text(f"  | {event.message}", style="dim"))
        elif isinstance(event, WarningEvent):
            self._console.print(Text(f"warning: {event.message}", style="yellow"))

    def _transition(self, event: TransitionEvent) -> None:
        now = time.monotonic()
        if not self._phases or self._phases[-1].name != event.source:
            # The first phase (or a resumed one) was entered before this view saw it.
            self._phases.append(self._phase(event.source, now - event.duration_s))
        current = self._phases[-1]
        if event.trigger == Trigger.RETRY:
            current.attempts += 1
            return
        current.duration_s = event.duration_s
        # Cleanup's trigger names how the build ended, not how cleanup went (a failed delete
        # shows as a warning): it finished, which is all its row says.
        current.left_by = (
            Trigger.SUCCEED.value if event.source in self._left_as_entered else event.trigger
        )
        if event.dest in self._phase_names:
            self._phases.append(self._phase(event.dest, now))

    def _phase(self, name: str, started: float) -> _Phase:
        return _Phase(name, self._labels.get(name, name), started)

    def _render(self) -> Group:
        with self._lock:
            table = Table.grid(padding=(0, 2))
            now = time.monotonic()
            for phase in self._phases:
                table.add_row(*_phase_row(phase, now))
            return Group(table, Text(self._status, style="bold"))

    def failed(self, error: KilnError, state: BuildState) -> None:
        self._console.print(Text(error_text(error, state), style="bold red"))

    def done(self, result: Template, state: BuildState) -> None:
        self._console.print(Text(done_text(result, state), style="bold green"))

    def aborted(self, state: BuildState, *, embedded: bool) -> None:
        self._live.stop()
        message, hint = abort_report(state, embedded=embedded)
        self._console.print(Text(f"kiln: {message}\nhint: {hint}", style="bold red"))

    def detached(self, state: BuildState) -> None:
        print_detached(state)


def _phase_row(phase: _Phase, now: float) -> tuple[str, str, str, str]:
    running = phase.duration_s is None
    seconds = now - phase.started if phase.duration_s is None else phase.duration_s
    mark = RUNNING_MARK if running else PHASE_MARKS.get(phase.left_by or "", "?")
    attempts = f"attempt {phase.attempts}" if phase.attempts > 1 else ""
    return mark, phase.label, f"{seconds:6.1f}s", attempts
