"""Failure diagnostics: dmesg and df in the sandbox, turned into OOM or disk advice
(docs/protocol.md#diagnostics).

Not a state: the driver calls :func:`explain` while failing, so that the error the caller sees
says what to change (diagnostics once the proxy has answered) and which sandbox and build it
concerns. Best effort: a diagnostic that fails is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib

from kiln.errors import BuildCancelled, BuildFailed, KilnError, WithDiagnostics
from kiln.machine._services import Services
from kiln.machine._state import BuildState
from kiln.machine.protocol import (
    DIAGNOSTIC_TIMEOUT_S,
    advice,
    diagnostic_commands,
    dmesg_shows_oom,
    max_disk_usage_percent,
    mentions_disk_error,
    pull_denied_image,
)

ROOT = "root"
# The two commands run back to back; a stuck proxy must not hold the failure much longer.
_TOTAL_TIMEOUT_S = 3 * DIAGNOSTIC_TIMEOUT_S


async def explain(
    state: BuildState, services: Services, error: BaseException, *, diagnoses: bool
) -> BaseException:
    """``error`` with diagnostics once the proxy answered (unless the state declares
    ``diagnoses = false``), and the sandbox and build ids once the sandbox exists."""
    if isinstance(error, BuildCancelled | BuildFailed):
        return error
    if state.proxy_ready and diagnoses:
        error = WithDiagnostics(error, await diagnose(state, services, error))
    if state.sandbox_id is not None:
        error = BuildFailed(
            error, sandbox_id=state.sandbox_id, build_id=state.build_id, phase=state.state
        )
    return error


async def diagnose(state: BuildState, services: Services, error: BaseException) -> list[str]:
    """Advice lines for ``error``: login advice when a registry refused a pull, memory advice on
    OOM evidence, disk advice on a full disk."""
    outputs: list[str] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_TOTAL_TIMEOUT_S):
            for command, args in diagnostic_commands():
                outputs.append(await _collect(state, services, command, args))
    dmesg = outputs[0] if outputs else ""
    df = outputs[1] if len(outputs) > 1 else ""
    disk_error = state.disk_error_seen or mentions_disk_error(str(error))
    return advice(
        oom=dmesg_shows_oom(dmesg),
        disk_percent=max_disk_usage_percent(df),
        disk_error=disk_error,
        denied_image=state.pull_denied_image or pull_denied_image(str(error)),
    )


async def _collect(state: BuildState, services: Services, command: str, args: list[str]) -> str:
    """The command's non-stderr output, or nothing when it could not run."""
    try:
        result = await services.proxy(state).run(
            command, args, user=ROOT, timeout=DIAGNOSTIC_TIMEOUT_S
        )
    except KilnError:
        return ""
    return "\n".join(result.stdout)
