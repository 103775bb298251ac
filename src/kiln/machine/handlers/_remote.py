"""One-shot remote commands whose non-zero exit is a build error (§3.5 step 6 wording)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kiln.api import ProxyClient, RunResult, run_exit_code
from kiln.errors import BuildError
from kiln.machine.protocol import command_failed_message

# Short steps (mkdir, chmod) take well under a second: one still running after a minute is
# stuck, and the daemon kills it rather than letting it hold the phase until its deadline.
SHORT_STEP_TIMEOUT_S = 60.0
# How many of a failed command's last stderr lines its error carries (the log gets them all).
STDERR_TAIL_LINES = 20

# Where a command's output lines go: (line, "stdout" | "stderr").
LogLine = Callable[[str, str], None]


async def run_checked(
    proxy: ProxyClient,
    command: str,
    args: Sequence[str],
    *,
    user: str | None = None,
    timeout: float = SHORT_STEP_TIMEOUT_S,
    log: LogLine | None = None,
) -> RunResult:
    """Run ``command`` through ``POST /api/v1/processes/run``; a failure raises BuildError.

    Its output goes to ``log`` (the build log) whatever the exit; a failure's error ends with
    the command's last stderr lines, which usually say what went wrong (tar's messages, say).
    """
    result = await proxy.run(command, list(args), user=user, timeout=timeout)
    if log is not None:
        for line in result.stdout:
            log(line, "stdout")
        for line in result.stderr:
            log(line, "stderr")
    code = run_exit_code(result)
    if code != 0:
        raise BuildError(failure_message(command, code, result))
    return result


def failure_message(command: str, code: int, result: RunResult) -> str:
    """The reference's wording, then the tail of stderr, one indented line each."""
    message = command_failed_message(command, code, result.oom_killed)
    tail = [line for line in result.stderr[-STDERR_TAIL_LINES:] if line.strip()]
    if not tail:
        return message
    return message + ":\n" + "\n".join(f"  {line}" for line in tail)
