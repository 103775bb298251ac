"""How a running build is shown: a rich live view on a terminal, plain lines elsewhere, JSON lines
with ``--json``. A view receives the build's typed events and the final result or error."""

from __future__ import annotations

import json
import time
from collections import deque
from types import TracebackType
from typing import Any, Protocol, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from kiln.errors import KilnError

LOG_TAIL_LINES = 12  # enough to see what the builder is doing without scrolling the phases away
REFRESH_PER_SECOND = 4


def event_dict(event: Any) -> dict[str, Any]:
    """An event as a flat JSON object whose kind is under ``event``."""
    data = dict(event.to_dict())
    data["event"] = data.pop("type", type(event).__name__)
    return data


class View(Protocol):
    def __enter__(self) -> View: ...
    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...
    def notice(self, message: str) -> None: ...
    def event(self, event: Any) -> None: ...
    def failed(self, error: KilnError, state: Any) -> None: ...
    def done(self, result: Any, state: Any) -> None: ...


class JsonView:
    """One JSON object per line on stdout; the last one is ``{"event": "result", ...}``."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def __enter__(self) -> JsonView:
        return self

    def __exit__(self, *exc: object) -> None:
        self._out.flush()

    def _write(self, data: dict[str, Any]) -> None:
        self._out.write(json.dumps(data, default=str) + "\n")
        self._out.flush()

    def notice(self, message: str) -> None:
        self._write({"event": "notice", "message": message})

    def event(self, event: Any) -> None:
        self._write(event_dict(event))

    def failed(self, error: KilnError, state: Any) -> None:
        self._write(_result("failed" if state is None else state.state, state, error=error))

    def done(self, result: Any, state: Any) -> None:
        self._write(_result("done", state, template=result))


def _result(
    outcome: str, state: Any, *, error: KilnError | None = None, template: Any = None
) -> dict[str, Any]:
    return {
        "event": "result",
        "state": outcome,
        "build_id": getattr(state, "build_id", None),
        "sandbox_id": getattr(state, "sandbox_id", None),
        "template": template,
        "error": None if error is None else str(error),
        "hint": None if error is None else error.hint,
    }


class PlainView:
    """Plain lines for logs and pipes."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def __enter__(self) -> PlainView:
        return self

    def __exit__(self, *exc: object) -> None:
        self._out.flush()

    def _line(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()

    def notice(self, message: str) -> None:
        self._line(message)

    def event(self, event: Any) -> None:
        data = event_dict(event)
        kind = data["event"]
        if kind == "build_log":
            self._line(f"  | {data.get('message', '')}")
        elif kind == "warning":
            self._line(f"warning: {data.get('message', '')}")
        elif kind == "status":
            self._line(str(data.get("message", "")))

    def failed(self, error: KilnError, state: Any) -> None:
        self._line(f"kiln: error: {error.display()}")

    def done(self, result: Any, state: Any) -> None:
        template_id = result.get("id", "-") if isinstance(result, dict) else "-"
        self._line(f"done: template {template_id}")


class RichView:
    """A live panel: the phases with their durations, the current status and the log tail."""

    def __init__(self) -> None:
        self._console = Console(stderr=True)
        self._phases: list[tuple[str, float, float | None]] = []
        self._status = "starting"
        self._log: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        self._live = Live(
            self._render(), console=self._console, refresh_per_second=REFRESH_PER_SECOND
        )

    def __enter__(self) -> RichView:
        self._live.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._live.update(self._render())
        self._live.__exit__(kind, exc, tb)

    def notice(self, message: str) -> None:
        self._console.print(Text(message, style="yellow"))

    def event(self, event: Any) -> None:
        data = event_dict(event)
        kind = data["event"]
        if kind == "transition":
            self._enter_phase(str(data.get("dest", "?")))
        elif kind == "build_log":
            self._log.append(str(data.get("message", "")))
        elif kind == "status":
            self._status = str(data.get("message", ""))
        elif kind == "warning":
            self._console.print(Text(f"warning: {data.get('message', '')}", style="yellow"))
        self._live.update(self._render())

    def _enter_phase(self, phase: str) -> None:
        now = time.monotonic()
        if self._phases and self._phases[-1][2] is None:
            name, started, _ = self._phases[-1]
            self._phases[-1] = (name, started, now)
        self._phases.append((phase, now, None))

    def _render(self) -> Group:
        table = Table.grid(padding=(0, 2))
        now = time.monotonic()
        for name, started, ended in self._phases:
            seconds = (now if ended is None else ended) - started
            mark = "[bold cyan]>[/]" if ended is None else "[green]✓[/]"
            table.add_row(mark, name, f"{seconds:6.1f}s")
        log = Text("\n".join(self._log), style="dim")
        return Group(table, Text(self._status, style="bold"), log)

    def failed(self, error: KilnError, state: Any) -> None:
        self._console.print(Text(f"kiln: error: {error.display()}", style="bold red"))

    def done(self, result: Any, state: Any) -> None:
        template_id = result.get("id", "-") if isinstance(result, dict) else "-"
        self._console.print(Text(f"done: template {template_id}", style="bold green"))
