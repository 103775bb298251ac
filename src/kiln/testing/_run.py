"""Run one build to its end against an emulator and keep everything a test wants to look at."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import attrs
import structlog
import structlog.testing

from kiln.machine import (
    Backoff,
    BuildOptions,
    BuildState,
    Driver,
    Event,
    MachineSpec,
    PersistHook,
    Secrets,
    Services,
    TransitionEvent,
    load_machine_spec,
    no_persist,
)
from kiln.plan import BuildPlan, plan_dockerfile
from kiln.store import Store
from kiln.testing._client import EmulatorClient

# Any token is accepted by the emulator; this one is distinctive so a test can grep for leaks,
# and mixed case like real API keys and PATs, so a redaction that compares lower-cased text leaks.
TEST_TOKEN = "kiln-Testing-Token-7Fq2ZxLm9KpR4wVbN3cD"
# Retries wait no time in tests: the attempt budgets, not the wall clock, are what is tested.
NO_BACKOFF = Backoff(initial_s=0.0, factor=1.0, max_s=0.0)
# The package's logger, where the handler goes, and the build's own, which may be set quieter.
LOGGERS = ("kiln", "kiln.build")


def without_backoff(spec: MachineSpec | None = None) -> MachineSpec:
    """The declared machine (or ``spec``) with retries that do not wait."""
    return (spec or load_machine_spec()).with_backoff(NO_BACKOFF)


@attrs.frozen
class BuildRun:
    """How one build went: its final state, its events, the log lines kiln wrote and the
    emulator's request log."""

    state: BuildState
    events: tuple[Event, ...]
    # What kiln logged: stdlib log lines, or structlog event dicts as JSON when the application
    # configured structlog.
    logs: tuple[str, ...]
    requests: tuple[dict[str, Any], ...]
    # The live error behind ``state.error`` (with its cause chain), None when the build is done.
    error: BaseException | None

    @property
    def outcome(self) -> str | None:
        """``done``, ``failed`` or ``cancelled``."""
        return self.state.outcome

    def transitions(self) -> list[tuple[str, str, str]]:
        """Every transition as ``(source, trigger, dest)``, in order."""
        return [
            (event.source, event.trigger, event.dest)
            for event in self.events
            if isinstance(event, TransitionEvent)
        ]


async def run_build(
    emulator: EmulatorClient,
    dockerfile: str | os.PathLike[str] | BuildPlan,
    *,
    store: Store | None = None,
    spec: MachineSpec | None = None,
    options: BuildOptions | None = None,
    api_key: str = TEST_TOKEN,
    pat: str | None = None,
) -> BuildRun:
    """Build ``dockerfile`` (a path, or a plan) against ``emulator`` and return how it went.

    The build state is written to ``store`` after every transition when one is given. ``spec``
    defaults to the declared machine without backoff, so retries cost no wall time. ``pat``
    builds with a personal access token instead of ``api_key`` (``options`` then name the
    organization and project).
    """
    plan = dockerfile if isinstance(dockerfile, BuildPlan) else plan_dockerfile(dockerfile)
    state = BuildState(plan=plan, options=options or BuildOptions(api_url=emulator.url))
    events: list[Event] = []
    services = Services(
        spec=spec or without_backoff(), emit_event=events.append, secrets=_secrets(api_key, pat)
    )
    driver = Driver(services, persist=persist_to(store) if store is not None else no_persist)
    with _captured_logs() as logs:
        try:
            await driver.run(state)
        finally:
            await services.aclose()
    return BuildRun(
        state=state,
        events=tuple(events),
        logs=tuple(logs),
        requests=tuple(emulator.requests()),
        error=driver.error,
    )


def _secrets(api_key: str, pat: str | None) -> Secrets:
    return Secrets(pat=pat) if pat is not None else Secrets(api_key=api_key)


def persist_to(store: Store) -> PersistHook:
    """A persist hook writing the state to ``store``: created on the first call, then saved with
    compare-and-set against the version the previous call wrote."""
    finals = frozenset(load_machine_spec().finals)
    version: int | None = None

    async def persist(state: BuildState) -> None:
        nonlocal version
        data = state.to_dict()
        if version is None:
            record = await store.create(
                id=state.id,
                name=state.plan.name,
                state=state.state,
                data=data,
                sandbox_id=state.sandbox_id,
            )
            version = record.version
            return
        version = await store.save(
            state.id,
            expected_version=version,
            state=state.state,
            data=data,
            sandbox_id=state.sandbox_id,
            final=state.state in finals,
        )

    return persist


class _ListHandler(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self._lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self._lines.append(self.format(record))


@contextlib.contextmanager
def _captured_logs() -> Iterator[list[str]]:
    """Every line kiln logs meanwhile, by whichever route it takes (see kiln.machine's logger)."""
    lines: list[str] = []
    with _stdlib_lines(lines), _structlog_lines(lines):
        yield lines


@contextlib.contextmanager
def _stdlib_lines(lines: list[str]) -> Iterator[None]:
    """kiln's route while structlog is not configured, and a configured structlog's when it
    hands over to stdlib logging."""
    handler = _ListHandler(lines)
    loggers = [logging.getLogger(name) for name in LOGGERS]
    levels = [logger.level for logger in loggers]
    loggers[0].addHandler(handler)
    # kiln logs progress at INFO, which the root logger's default WARNING (or an application's
    # quieter setting for the build logger) would drop before the handler saw it.
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        loggers[0].removeHandler(handler)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@contextlib.contextmanager
def _structlog_lines(lines: list[str]) -> Iterator[None]:
    """kiln's route once the application configured structlog (its processors are paused
    meanwhile). Left alone otherwise: capturing would leave structlog configured afterwards,
    and kiln would then log through structlog's defaults, to stdout."""
    if not structlog.is_configured():
        yield
        return
    with structlog.testing.capture_logs() as entries:
        try:
            yield
        finally:
            lines.extend(json.dumps(entry, default=str, sort_keys=True) for entry in entries)
