"""The machine's driver in a test: a quick machine, runs in the background with their events,
shared emulators reset per test; fake Docker credential helpers."""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx

from kiln.emulator import Emulator
from kiln.machine import (
    Backoff,
    BuildOptions,
    BuildState,
    Driver,
    Event,
    MachineSpec,
    Secrets,
    Services,
    load_machine_spec,
)
from kiln.plan import BuildPlan, plan_dockerfile, plan_import
from kiln.testing import TEST_TOKEN, EmulatorClient, emulator_config
from support import leak_guard
from support.paths import HELLO

# Retries in tests wait milliseconds, not seconds: the budget is what is under test.
FAST_BACKOFF = Backoff(initial_s=0.01, factor=2.0, max_s=0.05)


def fast_spec(**state_changes: dict[str, Any]) -> MachineSpec:
    """The declared machine with a quick backoff and optional per-state overrides."""
    spec = load_machine_spec().with_backoff(FAST_BACKOFF)
    states = dict(spec.states)
    for name, changes in state_changes.items():
        states[name] = attrs.evolve(states[name], **changes)
    return attrs.evolve(spec, states=states)


class EmulatorPool:
    """Emulators shared by the tests of a session, one per configuration, reset between tests.

    Starting a server costs more than a whole build against it; the emulator's reset makes a
    shared one as good as new (state, templates, faults and request log cleared).
    """

    def __init__(self, root: Path) -> None:
        self._root = root
        self._stack = contextlib.ExitStack()
        self._urls: dict[tuple[str, tuple[tuple[str, Any], ...]], str] = {}

    def url(self, profile: str = "ideal", **overrides: Any) -> str:
        """The URL of the session's emulator for ``kiln.testing.emulator_config(profile,
        **overrides)``, started on first use."""
        key = (profile, tuple(sorted(overrides.items())))
        if key not in self._urls:
            data_dir = self._root / f"emulator-{len(self._urls)}"
            config = emulator_config(profile, data_dir=data_dir, **overrides)
            # Started inside some test, but the session's: the leak guard lets it run on.
            with leak_guard.shared():
                emulator = self._stack.enter_context(Emulator(config))
            self._urls[key] = emulator.url
        return self._urls[key]

    def close(self) -> None:
        self._stack.close()

    @contextlib.contextmanager
    def running(self, profile: str = "ideal", **overrides: Any) -> Iterator[EmulatorClient]:
        """That emulator, freshly reset; on exit, checks that no sandbox was left running."""
        with EmulatorClient(self.url(profile, **overrides)) as emulator:
            emulator.reset()
            yield emulator
            assert emulator.live_sandboxes() == [], "a builder sandbox was left running"


def hello_plan() -> BuildPlan:
    return plan_dockerfile(HELLO)


def import_plan() -> BuildPlan:
    return plan_import("python:3.12-slim")


@attrs.define
class Run:
    """A driver run in the background, with its events."""

    state: BuildState
    driver: Driver
    services: Services
    events: list[Event]
    task: asyncio.Task[BuildState] | None = None

    async def finish(self) -> BuildState:
        assert self.task is not None
        try:
            return await self.task
        finally:
            await self.services.aclose()

    def transitions(self) -> list[tuple[str, str, str]]:
        """Every transition as ``(source, trigger, dest)``, in order."""
        return [(e.source, e.trigger, e.dest) for e in self.events if e.type == "transition"]  # type: ignore[union-attr]

    def states_entered(self) -> list[str]:
        return [e.dest for e in self.events if e.type == "transition"]  # type: ignore[union-attr]

    def messages(self, kind: str) -> list[str]:
        return [e.message for e in self.events if e.type == kind]  # type: ignore[union-attr]


def start_run(
    emulator: EmulatorClient,
    plan: BuildPlan | None = None,
    *,
    spec: MachineSpec | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    options: BuildOptions | None = None,
    persist: Callable[[BuildState], Any] | None = None,
    state: BuildState | None = None,
) -> Run:
    """Start the driver on a new (or given) state against the emulator."""
    events: list[Event] = []
    state = state or BuildState(
        plan=plan or hello_plan(), options=options or BuildOptions(api_url=emulator.url)
    )
    services = Services(
        spec=spec or fast_spec(),
        emit_event=events.append,
        secrets=Secrets(api_key=TEST_TOKEN),
        transport=transport,
    )
    driver = Driver(services, persist=persist) if persist else Driver(services)
    run = Run(state=state, driver=driver, services=services, events=events)
    run.task = asyncio.create_task(driver.run(state))
    return run


async def run_to_end(emulator: EmulatorClient, plan: BuildPlan | None = None, **kwargs: Any) -> Run:
    run = start_run(emulator, plan, **kwargs)
    await run.finish()
    return run


def fake_credential_helper(
    directory: Path, name: str, answers: dict[str, str], *, fail_with: str | None = None
) -> Path:
    """Install ``docker-credential-<name>`` in ``directory`` (put it on PATH): for a server in
    ``answers`` it prints that JSON; for others Docker's "not found" answer, exit 1; with
    ``fail_with``, that message and exit 2 for every server. Each server asked is appended to
    ``directory/<name>.log``."""
    cases = "".join(
        f"  {shlex.quote(server)}) printf '%s' {shlex.quote(answer)} ;;\n"
        for server, answer in answers.items()
    )
    failing = f"printf '%s\\n' {shlex.quote(fail_with)} >&2; exit 2\n" if fail_with else ""
    script = (
        "#!/bin/sh\n"
        "read -r server\n"
        f'printf "%s\\n" "$server" >> {shlex.quote(str(directory / (name + ".log")))}\n'
        f"{failing}"
        'case "$server" in\n'
        f"{cases}"
        "  *) echo 'credentials not found in native keychain'; exit 1 ;;\n"
        "esac\n"
    )
    path = directory / f"docker-credential-{name}"
    path.write_text(script)
    path.chmod(0o755)
    return path


def helper_log(directory: Path, name: str) -> list[str]:
    log = directory / f"{name}.log"
    return log.read_text().splitlines() if log.exists() else []


class LoseFirstAnswer(httpx.AsyncBaseTransport):
    """Forwards every request; the first one ``lost_if`` picks really happens, but its answer is
    lost on the way back (a 502 from the proxy instead)."""

    def __init__(self, lost_if: Callable[[httpx.Request], bool]) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._lost_if = lost_if
        self.lost = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if self._lost_if(request) and not self.lost:
            self.lost += 1
            await response.aread()
            await response.aclose()
            return httpx.Response(502, text="Failed to proxy request", request=request)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()
