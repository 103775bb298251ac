"""run_builder: start (or adopt, or reattach to) the rootfs builder and stream its log (§3.5).

Only the builder uses start/follow/get: it is the one long process, whose pid must be known to
reattach after a dropped stream or a crash. Every other remote command is a one-shot ``run``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from kiln.api import (
    ExitStatus,
    OutputEvent,
    ProcessInfo,
    ProxyClient,
    exit_status,
    is_transient,
    with_silences,
)
from kiln.errors import ApiError, BuildError, KilnError
from kiln.machine._outcome import SUCCEEDED, Outcome, retry
from kiln.machine._services import Services
from kiln.machine._state import BuildState
from kiln.machine.protocol import (
    BUILDER_PATH_ENV,
    KEEPALIVE_INTERVAL_S,
    REMOTE_BUILD_DIR,
    builder_argv,
    command_failed_message,
    mentions_disk_error,
    pull_denied_image,
)

ROOT = "root"
PATH_ENV = "PATH"
# Pause before following again after a stream that delivered new lines and then ended early:
# the process is alive and making progress, so reconnecting promptly loses nothing.
REFOLLOW_DELAY_S = 0.1
# Pause before following again after a stream that ended with nothing new while the builder
# lives (a load balancer closing idle streams, say): the reference's reattach interval.
REATTACH_INTERVAL_S = 1.0
# The silence bound when states/ declares none.
DEFAULT_SILENCE_S = 30.0


async def run_builder(state: BuildState, services: Services) -> Outcome:
    """Re-entry: reattaches to state.builder_pid, else adopts a started builder; never a second."""
    argv = builder_argv(state.need_prepared().builder.command)
    proxy = services.proxy(state)
    if state.builder_pid is None:
        state.builder_pid = await _start_or_adopt(state, services, proxy, argv)
        # Recorded at once: a process that resumes this build reattaches instead of starting.
        await services.checkpoint(state)
    delivered_before = state.output_events_delivered
    keepalive = asyncio.create_task(_keepalive(proxy))
    try:
        status = await _follow_until_exit(state, services, proxy, state.builder_pid)
    except Exception as error:
        if not is_transient(error):
            raise
        # States/ declares that run_builder's budget counts failures without progress: this
        # attempt delivered output before the stream failed, so it tells the driver so.
        return retry(error, progressed=state.output_events_delivered > delivered_before)
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
    """Stream the log until the process ends; follow again whenever a stream ends before it.

    Every follow replays the output from the start, so the first
    ``state.output_events_delivered`` events of each stream are skipped. A stream that ends
    while the process lives is no failure (load balancers close idle and old streams): it is
    followed again for as long as the process lives and the deadlines hold, as the reference
    does. Errors (of a follow or of a status read) go to the driver as transient errors, whose
    budget counts failures without progress.
    """
    silence_s = services.spec.states[state.state].silence_s or DEFAULT_SILENCE_S
    while True:
        delivered_before = state.output_events_delivered
        status = await _follow_once(state, services, proxy, pid, silence_s)
        if status is None:
            status = exit_status(await proxy.get_process(pid))
        if status is not None:
            return status
        services.status(
            state, f"Process output stream ended before process {pid} exited; reattaching..."
        )
        progressed = state.output_events_delivered > delivered_before
        await asyncio.sleep(REFOLLOW_DELAY_S if progressed else REATTACH_INTERVAL_S)


async def _follow_once(
    state: BuildState, services: Services, proxy: ProxyClient, pid: int, silence_s: float
) -> ExitStatus | None:
    """Deliver one follow stream's new lines. None when the stream ended; the process's exit
    status when it ended while the stream stayed silent for ``silence_s`` (a stream that stays
    open after its process exited must not hold the build until the phase deadline)."""
    seen = 0
    async with (
        contextlib.aclosing(proxy.follow(pid)) as events,
        contextlib.aclosing(with_silences(events, silence_s)) as items,
    ):
        async for event in items:
            if event is None:
                status = exit_status(await proxy.get_process(pid))
                if status is not None:
                    return status
                continue
            seen += 1
            if seen > state.output_events_delivered:
                _deliver(state, services, event, seen)
    return None


def _deliver(state: BuildState, services: Services, event: OutputEvent, seen: int) -> None:
    state.output_events_delivered = seen
    if mentions_disk_error(event.line):
        state.disk_error_seen = True
    state.pull_denied_image = pull_denied_image(event.line) or state.pull_denied_image
    services.build_log(state, event.line, event.stream or "stdout")


async def _keepalive(proxy: ProxyClient) -> None:
    """Ping the sandbox so that its idle timeout does not end a long build; errors are ignored."""
    while True:
        await asyncio.sleep(KEEPALIVE_INTERVAL_S)
        with contextlib.suppress(KilnError):
            await proxy.health()
