"""create_sandbox, wait_running: get a running builder sandbox and its proxy URL."""

from __future__ import annotations

import asyncio
import datetime

from kiln.errors import BuildError
from kiln.machine._outcome import SUCCEEDED, Outcome
from kiln.machine._services import Services
from kiln.machine._state import BuildState, SandboxRequest
from kiln.machine.protocol import SANDBOX_TIMEOUT_SECS
from kiln.plan.sizing import MIB, builder_resources, format_bytes, rootfs_disk_bytes

RUNNING = "running"
TERMINATED = "terminated"
# Sandboxes usually start within a second: poll quickly at first, then back off so a slow
# start costs few requests. The phase deadline in states/build.toml bounds the whole wait. A
# sandbox that create answered as not running yet is not asked again at once: an answer that
# soon says the same (or, on the cloud, 502 while its route is programmed), and each poll after
# an idle wait costs kiln 1.5-2 ms of CPU (benchmarks/ANALYSIS.md, section 1).
POLL_FIRST_S = 0.1
POLL_FACTOR = 2.0
POLL_MAX_S = 1.0
# Sent as the create body's ``name``: an operator can tell kiln's builder sandboxes, and the
# build each belongs to, by it.
SANDBOX_NAME_PREFIX = "kiln-"


async def create_sandbox(state: BuildState, services: Services) -> Outcome:
    """Re-entry: reuses state.sandbox_id when the create already answered; else creates one,
    after reporting the sandbox an unanswered earlier request may have left."""
    if state.sandbox_id is not None:
        return SUCCEEDED
    if state.sandbox_request is not None:
        _report_unrecorded(state, services, state.sandbox_request)
    info = state.need_prepared()
    rootfs = rootfs_disk_bytes(
        disk_mb=state.options.disk_mb,
        has_parent=info.has_parent,
        parent_rootfs_disk_bytes=info.parent_rootfs_disk_bytes,
    )
    resources = builder_resources(
        rootfs_disk_bytes=rootfs,
        prepared_cpus=info.builder.cpus,
        prepared_memory_mb=info.builder.memory_mb,
        prepared_disk_mb=info.builder.disk_mb,
        cpus=state.options.cpus,
        memory_mb=state.options.memory_mb,
        builder_disk_mb=state.options.builder_disk_mb,
    )
    state.rootfs_disk_bytes = rootfs
    services.status(
        state,
        f"Builder resources: {resources.cpus:.2f} CPU, {format_bytes(resources.memory_mb * MIB)}, "
        f"{format_bytes(resources.disk_mb * MIB)} disk",
    )
    services.status(state, f"Target rootfs size: {format_bytes(rootfs)}")
    services.status(state, f"Creating rootfs builder sandbox from {info.builder.image}...")
    request = _request(state, services)
    # The intent is durable before the request leaves: a process that dies before the answer is
    # recorded leaves a trace saying a sandbox may exist, and until when.
    state.sandbox_request = request
    await services.checkpoint(state)
    created = await services.lifecycle(state).create_sandbox(
        image=info.builder.image,
        cpus=resources.cpus,
        memory_mb=resources.memory_mb,
        disk_mb=resources.disk_mb,
        timeout_secs=SANDBOX_TIMEOUT_SECS,
        name=request.name,
    )
    state.sandbox_id = created.sandbox_id
    state.sandbox_status = created.status
    state.sandbox_url = _present(created.sandbox_url)
    state.routing_hint = _present(created.routing_hint)
    # Recorded before anything else can fail: a sandbox nobody knows of is never deleted.
    await services.checkpoint(state)
    return SUCCEEDED


async def wait_running(state: BuildState, services: Services) -> Outcome:
    """Re-entry: polls again, unless the last answer already said running with a proxy URL."""
    sandbox_id = state.need_sandbox_id()
    delay = POLL_FIRST_S
    while not (state.sandbox_status == RUNNING and state.sandbox_url):
        if state.sandbox_status is not None and state.sandbox_status != RUNNING:
            await asyncio.sleep(delay)
            delay = min(POLL_MAX_S, delay * POLL_FACTOR)
        info = await services.lifecycle(state).get_sandbox(sandbox_id)
        state.sandbox_status = info.status
        state.sandbox_url = _present(info.sandbox_url) or state.sandbox_url
        state.routing_hint = state.routing_hint or _present(info.routing_hint)
        if info.status == TERMINATED:
            raise BuildError(f"Sandbox {sandbox_id} terminated before reaching 'running'")
        if info.status == RUNNING:
            break
    services.status(state, f"Rootfs builder sandbox {sandbox_id} is running")
    return SUCCEEDED


def _request(state: BuildState, services: Services) -> SandboxRequest:
    """This attempt's create request: named after the build (one name per attempt, so no two
    requests of a build can collide on it), and when a sandbox it made ends at the latest: the
    platform may create it until the request's phase deadline, then it idles out."""
    now = services.clock.now()
    # Made by create_sandbox's handler: the state it runs in is the one sending the request.
    window_s = services.spec.states[state.state].deadline_s + SANDBOX_TIMEOUT_SECS
    attempt = len(state.unrecorded_sandboxes) + 1
    return SandboxRequest(
        name=f"{SANDBOX_NAME_PREFIX}{state.id}-{attempt}",
        requested_at=now,
        expires_by=now + window_s,
    )


def _report_unrecorded(state: BuildState, services: Services, request: SandboxRequest) -> None:
    state.unrecorded_sandboxes.append(request)
    state.sandbox_request = None
    expires = datetime.datetime.fromtimestamp(request.expires_by, tz=datetime.UTC)
    services.warning(
        state,
        f"An earlier create request (sandbox name {request.name}) got no recorded answer: a"
        " builder sandbox kiln cannot name may exist; nothing keeps it alive, it ends by"
        f" {expires.isoformat(timespec='seconds')}",
    )


def _present(value: str | None) -> str | None:
    """Trimmed, with empty meaning absent (docs/protocol.md#proxy-routing)."""
    stripped = (value or "").strip()
    return stripped or None
