"""One-shot remote commands whose non-zero exit is a build error (§3.5 step 6 wording)."""

from __future__ import annotations

from collections.abc import Sequence

from kiln.api import ProxyClient, RunResult
from kiln.errors import BuildError
from kiln.machine.protocol import command_failed_message

# A process with neither an exit code nor a signal was killed without a trace; report it
# the way the reference reports an OOM kill with no signal.
_UNKNOWN_KILL_CODE = -9


async def run_checked(
    proxy: ProxyClient, command: str, args: Sequence[str], *, user: str | None = None
) -> RunResult:
    """Run ``command`` through ``POST /api/v1/processes/run``; a failure raises BuildError."""
    result = await proxy.run(command, list(args), user=user)
    code = exit_code(result)
    if code != 0:
        raise BuildError(command_failed_message(command, code, result.oom_killed))
    return result


def exit_code(result: RunResult) -> int:
    if result.exit_code is not None:
        return result.exit_code
    if result.signal is not None:
        return -result.signal
    return _UNKNOWN_KILL_CODE if result.oom_killed else 0
