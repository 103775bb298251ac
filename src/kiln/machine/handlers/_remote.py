"""One-shot remote step lists whose failure is a build error (docs/protocol.md#diagnostics)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kiln.api import ProxyClient, RunResult, run_exit_code
from kiln.errors import BuildError
from kiln.machine.protocol import ROOT_USER, ScriptReader, marker_prefix, shell_argv, step_exit_code

# Where a command's output lines go: (line, "stdout" | "stderr").
LogLine = Callable[[str, str], None]


async def run_steps(
    proxy: ProxyClient,
    build: str,
    steps: Sequence[Sequence[str]],
    *,
    timeout: float,
    log: LogLine,
) -> RunResult:
    """Run ``steps`` as root in one ``POST /api/v1/processes/run`` (a shell list, each step
    announced); a failure raises BuildError naming the step that failed, as the reference
    words it for that command alone, with its last stderr lines.

    The output goes to ``log`` (the build log) whatever the exit, markers left out.
    """
    argv = shell_argv(build, steps)
    result = await proxy.run(argv[0], argv[1:], user=ROOT_USER, timeout=timeout)
    reader = ScriptReader(marker_prefix(build))
    # A one-shot run returns stdout and stderr apart: the markers (stdout) first, so that the
    # stderr lines count for the step that was running last.
    for stream, lines in (("stdout", result.stdout), ("stderr", result.stderr)):
        for line in lines:
            if reader.read(line, stream) is not None:
                log(line, stream)
    code = run_exit_code(result)
    if code != 0:
        raise BuildError(reader.failure(step_exit_code(code), result.oom_killed))
    return result
