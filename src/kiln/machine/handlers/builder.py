"""run_builder: start (or adopt, or reattach to) the builder's one process and stream its log.

The process is a shell list (kiln.machine.protocol._script): extract the uploaded context, run the
rootfs builder, print its metadata. It is started, followed and reattached to as
docs/protocol.md#run-the-builder says for the builder; its markers say which step runs (for the
reference's error wording), which lines are the metadata (kept in the state for read_metadata) and
that every step succeeded (the exit status, so a follow stream that carries it needs no status
request after it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence

from kiln.api import (
    ExitStatus,
    ProcessInfo,
    ProxyClient,
    exit_status,
    is_transient,
)
from kiln.errors import ApiError, BuildError, KilnError
from kiln.machine._outcome import SUCCEEDED, Outcome, retry
from kiln.machine._services import Services
from kiln.machine._state import BuildState
from kiln.machine.protocol import (
    BUILDER_PATH_ENV,
    KEEPALIVE_INTERVAL_S,
    ScriptReader,
    builder_argv,
    builder_steps,
    directory_step,
    extraction_steps,
    marker_prefix,
    mentions_disk_error,
    pull_denied_image,
    shell_argv,
    step_exit_code,
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
# What the process's steps announce, in the status words of docs/protocol.md#status-lines.
UNTARRING = "Untarring build context archive in builder sandbox..."
EXTRACTED = "Build context extracted; removed remote archive"
RUNNING_BUILDER = "Running offline rootfs builder..."
TAR = "tar"
START_DIR = "/"


async def run_builder(state: BuildState, services: Services) -> Outcome:
    """Re-entry: reattaches to state.builder_pid, else adopts a started process; never a second."""
    builder = builder_argv(state.need_prepared().builder.command)
    argv = process_argv(state, builder)
    proxy = services.proxy(state)
    if state.builder_pid is None:
        state.builder_pid = await _start_or_adopt(state, services, proxy, argv)
        # Recorded at once: a process that resumes this build reattaches instead of starting.
        await services.checkpoint(state)
    delivered_before = state.output_events_delivered
    keepalive = asyncio.create_task(_keepalive(proxy))
    try:
        status, reader = await _follow_until_exit(
            state, services, proxy, state.builder_pid, _announcements(state, builder[0])
        )
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
        code = step_exit_code(status.code)
        raise BuildError(reader.failure(code, status.oom, with_stderr=reader.step != builder[0]))
    # Without the end marker (a status read said it exited 0), read_metadata reads the file.
    state.builder_metadata = "\n".join(reader.metadata) if reader.ended else None
    return SUCCEEDED


def process_argv(state: BuildState, builder: Sequence[str]) -> list[str]:
    """The one process: extraction first while the context is still to extract, then the
    builder. The same state gives the same argv, which is how a resumed build adopts it."""
    extraction = extraction_steps() if _extracts(state) else []
    return shell_argv(state.id, [directory_step(), *extraction, *builder_steps(builder)])


def _extracts(state: BuildState) -> bool:
    """Whether the process extracts the context (a split context was extracted by upload)."""
    return not state.plan.is_import and state.context_digest is None


def _announcements(state: BuildState, builder: str) -> dict[str, tuple[str, ...]]:
    """The status lines of docs/protocol.md#status-lines, said when the process reaches each
    step."""
    extracted = (EXTRACTED,) if _extracts(state) else ()
    return {TAR: (UNTARRING,), builder: (*extracted, RUNNING_BUILDER)}


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
    try:
        info = await proxy.start_process(
            argv[0],
            list(argv[1:]),
            user=ROOT,
            env={PATH_ENV: BUILDER_PATH_ENV},
            # The root directory, which exists before the process makes the build directory
            # (the daemon cannot start a process in a directory that does not exist yet). The
            # builder is given absolute paths only.
            working_dir=START_DIR,
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
    state: BuildState,
    services: Services,
    proxy: ProxyClient,
    pid: int,
    announcements: Mapping[str, Sequence[str]],
) -> tuple[ExitStatus, ScriptReader]:
    """Stream the log until the process ends; follow again whenever a stream ends before it.

    Every follow replays the output from the start, so the first
    ``state.output_events_delivered`` events of each stream are skipped (they are still read,
    for the markers). A stream that ends while the process lives is no failure (load balancers
    close idle and old streams): it is followed again for as long as the process lives and the
    deadlines hold, as the reference does. Errors (of a follow or of a status read) go to the
    driver as transient errors, whose budget counts failures without progress.
    """
    silence_s = services.spec.states[state.state].silence_s or DEFAULT_SILENCE_S
    while True:
        delivered_before = state.output_events_delivered
        reader = ScriptReader(marker_prefix(state.id))
        status = await _follow_once(state, services, proxy, pid, silence_s, reader, announcements)
        if status is None and reader.ended:
            # The end marker is printed only after every step exited 0.
            return ExitStatus(code=0, oom=False), reader
        if status is None:
            status = exit_status(await proxy.get_process(pid))
        if status is not None:
            return status, reader
        services.status(
            state, f"Process output stream ended before process {pid} exited; reattaching..."
        )
        progressed = state.output_events_delivered > delivered_before
        await asyncio.sleep(REFOLLOW_DELAY_S if progressed else REATTACH_INTERVAL_S)


async def _follow_once(
    state: BuildState,
    services: Services,
    proxy: ProxyClient,
    pid: int,
    silence_s: float,
    reader: ScriptReader,
    announcements: Mapping[str, Sequence[str]],
) -> ExitStatus | None:
    """Deliver one follow stream's new lines. None when the stream ended; the process's exit
    status when it ended while the stream stayed silent for ``silence_s`` (a stream that stays
    open after its process exited must not hold the build until the phase deadline)."""
    seen = 0
    async with contextlib.aclosing(proxy.follow_batches(pid, silence_s=silence_s)) as batches:
        async for batch in batches:
            if batch is None:
                status = exit_status(await proxy.get_process(pid))
                if status is not None:
                    return status
                continue
            lines: list[tuple[str, str]] = []
            for event in batch:
                seen += 1
                step = reader.step
                stream = event.stream or "stdout"
                line = reader.read(event.line, stream)
                if seen <= state.output_events_delivered:
                    continue
                state.output_events_delivered = seen
                if line is not None:
                    lines.append((line, stream))
                if reader.step != step:
                    # The step's announcements come after the lines before them.
                    _deliver(state, services, lines)
                    lines = []
                    for text in announcements.get(reader.step or "", ()):
                        services.status(state, text)
            _deliver(state, services, lines)
    return None


def _deliver(state: BuildState, services: Services, lines: Sequence[tuple[str, str]]) -> None:
    """Log lines, in order, with what they tell the diagnostics. The diagnostics read them as
    one text: no marker spans a line end, so a batch says what its lines say one by one."""
    if not lines:
        return
    text = lines[0][0] if len(lines) == 1 else "\n".join(line for line, _stream in lines)
    if mentions_disk_error(text):
        state.disk_error_seen = True
    if pull_denied_image(text) is not None:
        for line, _stream in lines:
            state.pull_denied_image = pull_denied_image(line) or state.pull_denied_image
    services.build_logs(state, lines)


async def _keepalive(proxy: ProxyClient) -> None:
    """Ping the sandbox so that its idle timeout does not end a long build; errors are ignored."""
    while True:
        await asyncio.sleep(KEEPALIVE_INTERVAL_S)
        with contextlib.suppress(KilnError):
            await proxy.health()
