"""How Services reports a build's events: to the caller always, to the log when it listens."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from kiln.machine import BuildLogEvent, BuildState, Event, Services, StatusEvent, load_machine_spec
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


class _Services(Services):
    test_logger: _Logger

    def logger(self, state: BuildState) -> Any:
        return self.test_logger


def _services(logger: _Logger, events: list[Event]) -> Services:
    services = _Services(spec=load_machine_spec(), emit_event=events.append)
    services.test_logger = logger
    return services


@pytest.mark.parametrize(("level", "logged"), [(logging.INFO, True), (logging.WARNING, False)])
def test_a_build_log_line_is_logged_only_when_the_logger_listens_at_info(
    level: int, logged: bool
) -> None:
    logger, events = _Logger(level), []  # type: ignore[var-annotated]
    state = BuildState(plan=plan_import("python:3.12-slim"))
    state.build_id = "build-1"
    _services(logger, events).build_log(state, "step 1", "stderr")
    assert events == [BuildLogEvent("step 1", "stderr")]
    assert (events[0].id, events[0].build_id) == (state.id, "build-1")
    expected = [("build_log", {"message": "step 1", "stream": "stderr"})]
    assert logger.calls == (expected if logged else [])


def test_other_events_are_still_handed_to_the_logger() -> None:
    logger, events = _Logger(logging.WARNING), []  # type: ignore[var-annotated]
    state = BuildState(plan=plan_import("python:3.12-slim"))
    _services(logger, events).status(state, "hello")
    assert events == [StatusEvent("hello")]
    assert logger.calls == [("status", {"message": "hello"})]
