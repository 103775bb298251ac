"""How Services reports a build's events: to the caller always, to the log when it listens."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from kiln.machine import BuildLogEvent, BuildState, Event, Services, StatusEvent, load_machine_spec
from kiln.machine import _services as services_module
from kiln.plan import plan_import


class _Logger:
    """A bound logger that says whether it listens at a level, and records what it is told."""

    def __init__(self, level: int) -> None:
        self.level = level
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def is_enabled_for(self, level: int) -> bool:
        return level >= self.level

    def info(self, event: str, **fields: Any) -> None:
        self.calls.append((event, fields))

    def bind(self, **context: Any) -> _Logger:
        return self


def _services(logger: _Logger, events: list[Event], monkeypatch: pytest.MonkeyPatch) -> Services:
    monkeypatch.setattr(services_module, "logger", lambda name: logger)
    return Services(spec=load_machine_spec(), emit_event=events.append)


@pytest.mark.parametrize(("level", "logged"), [(logging.INFO, True), (logging.WARNING, False)])
def test_a_build_log_line_is_logged_only_when_the_logger_listens_at_info(
    level: int, logged: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    logger, events = _Logger(level), []  # type: ignore[var-annotated]
    state = BuildState(plan=plan_import("python:3.12-slim"))
    state.build_id = "build-1"
    services = _services(logger, events, monkeypatch)
    services.build_log(state, "step 1", "stderr")
    logger.level = logging.INFO if level > logging.INFO else logging.WARNING
    services.build_log(state, "step 2", "stdout")
    assert events == [BuildLogEvent("step 1", "stderr"), BuildLogEvent("step 2", "stdout")]
    assert (events[0].id, events[0].build_id) == (state.id, "build-1")
    # The level is asked at each call: the second line follows the change.
    first = ("build_log", {"message": "step 1", "stream": "stderr"})
    second = ("build_log", {"message": "step 2", "stream": "stdout"})
    assert logger.calls == ([first] if logged else [second])


@pytest.mark.parametrize(("level", "logged"), [(logging.INFO, True), (logging.WARNING, False)])
def test_other_events_are_logged_only_when_the_logger_listens_at_info(
    level: int, logged: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    logger, events = _Logger(level), []  # type: ignore[var-annotated]
    state = BuildState(plan=plan_import("python:3.12-slim"))
    _services(logger, events, monkeypatch).status(state, "hello")
    assert events == [StatusEvent("hello")]
    assert logger.calls == ([("status", {"message": "hello"})] if logged else [])
