"""Failure diagnostics (§5.7): dmesg and df in the sandbox, turned into OOM / disk advice.

Not a state: the driver calls it while failing, once the proxy has answered, so that the error
the caller sees says what to change. Best effort: a diagnostic that fails is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib

from kiln.errors import KilnError
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
