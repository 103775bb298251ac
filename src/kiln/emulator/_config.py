"""The emulator's configuration: one frozen value, validated where it is built."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

import attrs

SignMode = Literal["legacy", "new"]
SIGN_MODES: tuple[SignMode, ...] = ("legacy", "new")

DEFAULT_HOST = "127.0.0.1"
MAX_PORT = 65535
# A process exit status is one byte.
MAX_EXIT_CODE = 255
# Linux numbers its signals up to SIGRTMAX.
MAX_SIGNAL = 64
# The builder stand-in is instant by default so test suites stay fast; `--builder-duration-ms` and
# `POST /_emulator/builder` slow it down to make live log streaming and timeouts observable.
DEFAULT_BUILDER_DURATION_MS = 0
DEFAULT_BUILDER_LOG_LINES = 0
DEFAULT_BUILDER_LINE_PACE_MS = 0


def is_loopback(host: str) -> bool:
    """True for names and addresses that only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _non_negative(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


def _port(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= MAX_PORT:
        raise ValueError(f"{attribute.name} must be within 0..{MAX_PORT} (0 picks a free one)")


def _exit_code(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= MAX_EXIT_CODE:
        raise ValueError(f"{attribute.name} must be within 0..{MAX_EXIT_CODE}, got {value}")


def _signal(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= MAX_SIGNAL:
        raise ValueError(f"{attribute.name} must be within 0..{MAX_SIGNAL} (0: none), got {value}")


def _positive_or_none(
    _instance: object, attribute: attrs.Attribute[float | None], value: float | None
) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value}")


@attrs.frozen
class BuilderBehaviour:
    """How the builder stand-in behaves: pace and injected failures.

    The configured value is the default; `POST /_emulator/builder` replaces it until a reset.
    ``exit_code`` makes the builder fail plainly, ``oom_kill`` makes the kernel kill it (with
    evidence in dmesg), ``enospc`` makes it run out of disk (evidence in its log and in df),
    ``signal`` kills it with that signal for another reason than memory (no OOM evidence).
    """

    exit_code: int = attrs.field(default=0, validator=_exit_code)
    oom_kill: bool = False
    enospc: bool = False
    signal: int = attrs.field(default=0, validator=_signal)
    duration_ms: int = attrs.field(default=DEFAULT_BUILDER_DURATION_MS, validator=_non_negative)
    log_lines: int = attrs.field(default=DEFAULT_BUILDER_LOG_LINES, validator=_non_negative)
    line_pace_ms: int = attrs.field(default=DEFAULT_BUILDER_LINE_PACE_MS, validator=_non_negative)


@attrs.frozen
class EmulatorConfig:
    """Everything that shapes one emulator instance.

    ``data_dir`` None means a fresh temporary directory that is removed when the emulator stops;
    a given directory is kept, so templates and blobs survive a restart.
    """

    host: str = DEFAULT_HOST
    port: int = attrs.field(default=0, validator=_port)
    data_dir: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    api_key: str | None = None
    sign_mode: SignMode = attrs.field(default="legacy", validator=attrs.validators.in_(SIGN_MODES))
    start_delay_ms: int = attrs.field(default=0, validator=_non_negative)
    latency_ms: int = attrs.field(default=0, validator=_non_negative)
    bandwidth_mbps: float | None = attrs.field(default=None, validator=_positive_or_none)
    builder: BuilderBehaviour = BuilderBehaviour()
    allow_remote: bool = False

    def __attrs_post_init__(self) -> None:
        if not self.allow_remote and not is_loopback(self.host):
            raise ValueError(
                f"host {self.host!r} is not a loopback address; the emulator accepts any token, "
                "so it only listens beyond this machine with allow_remote=True"
            )
