"""What handlers use besides the state: API clients, the event sink, the clock.

Services hold the live, unpersisted half of a build: credentials, the HTTP client and its
connections, the caller's callback. They are rebuilt from the environment when a build resumes,
which is why nothing here may be needed to *understand* the state, only to act on it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import attrs
import httpx

from kiln._logging import logger
from kiln._tasks import finish_despite_cancel
from kiln.api import (
    ApiSettings,
    ImageServiceClient,
    LifecycleClient,
    PlatformClient,
    ProxyClient,
    create_http_client,
)
from kiln.errors import ConfigError
from kiln.machine._events import BuildLogEvent, Event, StatusEvent, WarningEvent
from kiln.machine._spec import MachineSpec
from kiln.machine._state import BuildState

EventSink = Callable[[Event], None]
CheckpointHook = Callable[[BuildState], Awaitable[None]]
LOGGER_NAME = "kiln.build"


@attrs.frozen
class Secrets:
    """Credentials passed by the caller; never persisted, never logged."""

    api_key: str | None = attrs.field(default=None, repr=False)
    pat: str | None = attrs.field(default=None, repr=False)


class CheckpointFailed(BaseException):
    """The store refused a mid-handler write; the driver re-raises ``original`` and stops.

    A BaseException so that no handler's error handling turns it into a build failure: a
    store that lost ownership must stop this process, not make it clean up (and delete the
    sandbox) under the new owner's feet.
    """

    def __init__(self, original: Exception) -> None:
        super().__init__(str(original))
        self.original = original


def _level_check(bound: Any) -> Callable[[int], bool]:
    """Whether a bound logger would pass a record of a level on, asked at each batch of records
    (the application may change its levels meanwhile). The loggers kiln makes can say (structlog's
    ``is_enabled_for``, stdlib's ``isEnabledFor``); any other kind is taken to listen."""
    check = getattr(bound, "is_enabled_for", None) or getattr(bound, "isEnabledFor", None)
    return check if callable(check) else _always


def _always(level: int) -> bool:
    return True


async def _no_checkpoint(state: BuildState) -> None:
    """Keep nothing."""


@attrs.frozen
class Clock:
    """Wall time for persisted timestamps; injectable so tests can move it."""

    now: Callable[[], float] = time.time


@attrs.define
class _Clients:
    settings: ApiSettings
    http: httpx.AsyncClient
    platform: PlatformClient
    lifecycle: LifecycleClient
    images: ImageServiceClient


@attrs.define
class Services:
    spec: MachineSpec
    emit_event: EventSink
    secrets: Secrets = attrs.field(factory=Secrets)
    env: Mapping[str, str] | None = None
    transport: httpx.AsyncBaseTransport | None = None
    clock: Clock = attrs.field(factory=Clock)
    # The driver's store hook, for handlers that must record a remote side effect at once.
    checkpoint_hook: CheckpointHook = _no_checkpoint
    # True when this process continues a build another process began: remote work of the
    # current state may already have happened without being recorded.
    resumed: bool = False
    _clients: _Clients | None = None
    _proxy: ProxyClient | None = None
    _proxy_key: tuple[str, str | None, str | None] | None = None
    _logger: Any = None
    _logger_key: tuple[str, str | None, str, str | None] | None = None
    _enabled_for: Callable[[int], bool] = _always

    # -- events ----------------------------------------------------------------------------

    def logger(self, state: BuildState) -> Any:
        # ``id`` is kiln's build id (what `kiln resume` takes); ``build_id`` is the platform's.
        # Bound once per context, not per event: a fast builder log is one event a line, and
        # binding anew cost 13 µs of each (bench_logs' profile).
        key = (state.id, state.build_id, state.state, state.sandbox_id)
        if self._logger is None or self._logger_key != key:
            self._logger = logger(LOGGER_NAME).bind(
                id=state.id,
                build_id=state.build_id,
                state=state.state,
                sandbox_id=state.sandbox_id,
            )
            self._logger_key = key
            self._enabled_for = _level_check(self._logger)
        return self._logger

    def emit(self, state: BuildState, event: Event) -> None:
        """Deliver an event, stamped with the build's ids, to the caller; log it with the build's
        bound context when that logger listens at INFO (a build emits some forty events, and
        a dropped structlog call cost about as much as delivering one)."""
        bound = self.logger(state)
        if self._enabled_for(logging.INFO):
            bound.info(event.type, **event.payload())
        self.emit_event(event.in_build(state.id, state.build_id))

    def status(self, state: BuildState, message: str) -> None:
        self.emit(state, StatusEvent(message))

    def warning(self, state: BuildState, message: str) -> None:
        self.emit(state, WarningEvent(message))

    def build_log(self, state: BuildState, line: str, stream: str) -> None:
        self.build_logs(state, ((line, stream),))

    def build_logs(self, state: BuildState, lines: Iterable[tuple[str, str]]) -> None:
        """Lines of the builder's log, as (line, stream): each delivered as a BuildLogEvent made
        stamped (no copy per line, as ``in_build`` makes), and logged only when the build's
        logger listens at INFO, asked once per call: a fast builder writes tens of thousands of
        lines a second, and each structlog call that would be dropped cost as much as the rest
        of the line's delivery (bench_logs' profile)."""
        bound = self.logger(state)
        listening = self._enabled_for(logging.INFO)
        id, build_id = state.id, state.build_id
        emit = self.emit_event
        for line, stream in lines:
            event = BuildLogEvent(line, stream, id=id, build_id=build_id)
            if listening:
                bound.info(event.type, **event.payload())
            emit(event)

    async def checkpoint(self, state: BuildState) -> None:
        """Persist the state now: a remote side effect (a sandbox, a process) just happened."""
        try:
            # A cancel (Ctrl-C) must not cut a store write short: the store would move on while
            # the writer's record of its version did not, and the next write would be refused
            # as stale. The write lands, then the build stops.
            await finish_despite_cancel(self.checkpoint_hook(state))
        except Exception as error:
            raise CheckpointFailed(error) from error

    # -- clients ---------------------------------------------------------------------------

    def settings(self, state: BuildState) -> ApiSettings:
        return self._connect(state).settings

    def platform(self, state: BuildState) -> PlatformClient:
        return self._connect(state).platform

    def lifecycle(self, state: BuildState) -> LifecycleClient:
        return self._connect(state).lifecycle

    def images(self, state: BuildState) -> ImageServiceClient:
        return self._connect(state).images

    def proxy_of(
        self, state: BuildState, sandbox_id: str, sandbox_url: str | None, routing_hint: str | None
    ) -> ProxyClient:
        """A proxy client for a sandbox the build does not hold (the Image Service's builder)."""
        clients = self._connect(state)
        return ProxyClient.for_sandbox(
            clients.settings,
            clients.http,
            sandbox_id=sandbox_id,
            sandbox_url=sandbox_url,
            routing_hint=routing_hint,
        )

    def proxy(self, state: BuildState) -> ProxyClient:
        """The proxy client of the state's sandbox, rebuilt when the sandbox's address changes."""
        if state.sandbox_id is None:
            raise ConfigError("no builder sandbox yet: the proxy is not reachable")
        key = (state.sandbox_id, state.sandbox_url, state.routing_hint)
        if self._proxy is None or self._proxy_key != key:
            clients = self._connect(state)
            self._proxy = ProxyClient.for_sandbox(
                clients.settings,
                clients.http,
                sandbox_id=state.sandbox_id,
                sandbox_url=state.sandbox_url,
                routing_hint=state.routing_hint,
            )
            self._proxy_key = key
        return self._proxy

    def _connect(self, state: BuildState) -> _Clients:
        if self._clients is None:
            options = state.options
            settings = ApiSettings.from_env(
                self.env,
                api_url=options.api_url,
                api_key=self.secrets.api_key,
                pat=self.secrets.pat,
                organization_id=options.organization_id,
                project_id=options.project_id,
                namespace=options.namespace,
            )
            http = create_http_client(settings, transport=self.transport)
            self._clients = _Clients(
                settings=settings,
                http=http,
                platform=PlatformClient(settings, http),
                lifecycle=LifecycleClient(settings, http),
                images=ImageServiceClient(settings, http),
            )
        return self._clients

    async def aclose(self) -> None:
        if self._clients is not None:
            await self._clients.http.aclose()
            self._clients = None
            self._proxy = None
