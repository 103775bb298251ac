"""run_builder: start (or adopt, or reattach to) the rootfs builder and stream its log (§3.5).

Only the builder uses start/follow/get: it is the one long process, whose pid must be known to
reattach after a dropped stream or a crash. Every other remote command is a one-shot ``run``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from kiln.api import ExitStatus, ProcessInfo, ProxyClient, exit_status
from kiln.errors import ApiError, BuildError, KilnError, TransportError
from kiln.machine._outcome import SUCCEEDED, Outcome
from kiln.machine._services import Services
from kiln.machine._state import BuildState
from kiln.machine.protocol import (
    BUILDER_PATH_ENV,
    KEEPALIVE_INTERVAL_S,
    REMOTE_BUILD_DIR,
    builder_argv,
    command_failed_message,
    mentions_disk_error,
)

ROOT = "root"
PATH_ENV = "PATH"
# Pause before following again after a stream that delivered new lines and then ended early:
# the process is alive and making progress, so reconnecting promptly loses nothing.
REFOLLOW_DELAY_S = 0.1


class StreamEndedEarly(TransportError):
    """The follow stream closed while the builder still runs and brought nothing new."""


async def run_builder(state: BuildState, services: Services) -> Outcome:
    """Re-entry: reattaches to state.builder_pid, else adopts a started builder; never a second."""
    argv = builder_argv(state.need_prepared().builder.command)
    proxy = services.proxy(state)
    if state.builder_pid is None:
        state.builder_pid = await _start_or_adopt(state, services, proxy, argv)
        # Recorded at once: a process that resumes this build reattaches instead of starting.
        await services.checkpoint(state)
    keepalive = asyncio.create_task(_keepalive(proxy))
    try:
        status = await _follow_until_exit(state, services, proxy, state.builder_pid)
    finally:
        keepalive.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keepalive
    if status.code != 0:
        raise BuildError(command_failed_message(argv[0], status.code, status.oom))
    return SUCCEEDED


async def _start_or_adopt(
    state: BuildState, services: Services, proxy: ProxyClient, argv: Sequence[str]
) -> int:
    """Start the builder; when an earlier attempt may have started it, adopt that one instead.

    A start whose response was lost may still have started the process, and two builders
    would race on the same output paths: so after any failed start (this attempt's, an
    earlier attempt's, or a crashed process's) the process list is searched first.
    """
    if state.attempts_in(state.state) > 1 or services.resumed:
        adopted = _match(await proxy.list_processes(), argv)
        if adopted is not None:
            return adopted
    services.status(state, "Running offline rootfs builder...")
    try:
        info = await proxy.start_process(
            argv[0],
            list(argv[1:]),
            user=ROOT,
            env={PATH_ENV: BUILDER_PATH_ENV},
            working_dir=REMOTE_BUILD_DIR,
        )
    except ApiError as error:
        attempt = state.attempts_in(state.state)
        services.warning(
            state,
            f"Process start attempt {attempt} failed; looking for an already-started process...",
        )
        adopted = _match(await proxy.list_processes(), argv)
        if adopted is None:
            raise error from None
        return adopted
    return info.pid


def _match(processes: Sequence[ProcessInfo], argv: Sequence[str]) -> int | None:
    """The newest process with exactly our command and arguments, if any."""
    pids = [p.pid for p in processes if p.command == argv[0] and list(p.args) == list(argv[1:])]
    return max(pids, default=None)


async def _follow_until_exit(
    state: BuildState, services: Services, proxy: ProxyClient, pid: int
) -> ExitStatus:
    """Stream the log until the process ends; reconnect while streams keep bringing lines.

    Every follow replays the output from the start, so the first
    ``state.output_events_delivered`` events of each stream are skipped. A stream that ends
    without new lines while the process runs raises StreamEndedEarly: a transient error, so
    the state's attempt budget (not an endless loop) bounds a stream that keeps failing.
    """
    while True:
        delivered_before = state.output_events_delivered
        seen = 0
        async for event in proxy.follow(pid):
            seen += 1
            if seen <= state.output_events_delivered:
                continue
            state.output_events_delivered = seen
            if mentions_disk_error(event.line):
                state.disk_error_seen = True
            services.build_log(state, event.line, event.stream or "stdout")
        status = exit_status(await proxy.get_process(pid))
        if status is not None:
            return status
        message = f"Process output stream ended before process {pid} exited; reattaching..."
        services.warning(state, message)
        if state.output_events_delivered == delivered_before:
            raise StreamEndedEarly(message)
        await asyncio.sleep(REFOLLOW_DELAY_S)


async def _keepalive(proxy: ProxyClient) -> None:
    """Ping the sandbox so that its idle timeout does not end a long build; errors are ignored."""
    while True:
        await asyncio.sleep(KEEPALIVE_INTERVAL_S)
        with contextlib.suppress(KilnError):
            await proxy.health()
