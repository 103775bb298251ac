"""Reading a failed build: OOM and disk evidence, and the advice it leads to
(docs/protocol.md#diagnostics)."""

from __future__ import annotations

import re

from kiln.machine.protocol._docker_config import DOCKER_HUB, registry_of
from kiln.machine.protocol._layout import REMOTE_BUILD_DIR

# At or above this usage on any filesystem the builder touches, a failure is blamed on disk
# space: the builder needs headroom for layers and the image it assembles, so a nearly full disk
# fails in ways that rarely say ENOSPC.
DISK_ADVICE_THRESHOLD_PERCENT = 95

# Kernel log phrases the OOM killer leaves behind (lower-cased).
_OOM_MARKERS = ("out of memory", "oom-kill", "killed process")
# Phrases a process prints when a write hits a full disk (lower-cased).
_DISK_FULL_MARKERS = ("enospc", "no space")
# `df -P` puts the use percentage in the fifth column; header lines do not parse as a number.
_DF_USE_COLUMN = 4
_PERCENT = re.compile(r"\+?([0-9]+)%")
# A percentage above this cannot be real (the reference parses it as one byte).
_MAX_PERCENT = 255

_SHELL = "/bin/sh"
# A login shell, so the PATH is the image's usual one: diagnostics must not depend on our env.
_SHELL_FLAG = "-lc"
# Either command may be missing or forbidden in the sandbox; `|| true` keeps the output usable.
_DMESG_SCRIPT = "dmesg 2>/dev/null || true"
# The build dir, docker's storage, and the root: the three places the builder writes to.
_DF_SCRIPT = (
    f"for path in '{REMOTE_BUILD_DIR}' /var/lib/docker /; do "
    'if [ -e "$path" ]; then df -P "$path"; fi; done 2>/dev/null || true'
)

OOM_ADVICE = (
    "The builder sandbox ran out of memory. Retry with a larger --memory-mb value "
    "(memory_mb in the Python API)."
)
DISK_ADVICE = (
    "The builder sandbox ran out of disk space. Retry with a larger --builder-disk-mb value "
    "(builder_disk_mb in the Python API)."
)
_OOM_SUFFIX = " (process was killed by the kernel OOM killer)"
# Docker's words when a registry refuses a pull for want of credentials; the image follows.
_PULL_DENIED = re.compile(r"pull access denied for ([^\s,]+)", re.IGNORECASE)


def dmesg_shows_oom(text: str) -> bool:
    """Whether the kernel log shows the OOM killer at work."""
    lowered = text.lower()
    return any(marker in lowered for marker in _OOM_MARKERS)


def mentions_disk_error(text: str) -> bool:
    """Whether a message or a build log line reports a full disk."""
    lowered = text.lower()
    return any(marker in lowered for marker in _DISK_FULL_MARKERS)


def _df_line_percent(line: str) -> int | None:
    fields = line.split()
    if len(fields) <= _DF_USE_COLUMN:
        return None
    match = _PERCENT.fullmatch(fields[_DF_USE_COLUMN])
    if match is None or int(match.group(1)) > _MAX_PERCENT:
        return None
    return int(match.group(1))


def max_disk_usage_percent(df_text: str) -> int | None:
    """The highest use percentage across the `df -P` tables in `df_text`, if any line parses."""
    percents = [p for p in map(_df_line_percent, df_text.splitlines()) if p is not None]
    return max(percents, default=None)


def diagnostic_commands() -> list[tuple[str, list[str]]]:
    """`(command, args)` of the two diagnostics: the kernel log, then disk usage.

    Run them as root (dmesg needs it) with DIAGNOSTIC_TIMEOUT_S, keeping stdout only.
    """
    return [(_SHELL, [_SHELL_FLAG, _DMESG_SCRIPT]), (_SHELL, [_SHELL_FLAG, _DF_SCRIPT])]


def pull_denied_image(line: str) -> str | None:
    """The image a builder log line says the registry refused to hand over, if it says so."""
    match = _PULL_DENIED.search(line)
    return match.group(1) if match else None


def registry_advice(image: str) -> str:
    """What to do when a registry refused ``image``: log in to it as Docker would."""
    registry = registry_of(image)
    login = "docker login" if registry == DOCKER_HUB else f"docker login {registry}"
    return (
        f"The registry {registry} refused to let the builder pull {image}: it needs "
        f"credentials. Run `{login}` (kiln sends the credentials of ~/.docker/config.json, "
        "credential helpers included), then build again."
    )


def advice(
    *, oom: bool, disk_percent: int | None, disk_error: bool, denied_image: str | None = None
) -> list[str]:
    """What to tell the user about a failure: registry credentials, memory, then disk; empty
    when nothing fits."""
    lines = []
    if denied_image is not None:
        lines.append(registry_advice(denied_image))
    if oom:
        lines.append(OOM_ADVICE)
    disk_full = disk_percent is not None and disk_percent >= DISK_ADVICE_THRESHOLD_PERCENT
    if disk_full or disk_error:
        lines.append(DISK_ADVICE)
    return lines


def command_failed_message(command: str, code: int, oom: bool) -> str:
    """The error text for a remote process that exited non-zero."""
    return f"Command '{command}' failed with exit code {code}" + (_OOM_SUFFIX if oom else "")
