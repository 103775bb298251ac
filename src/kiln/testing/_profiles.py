"""Emulator configurations for tests: the ideal profile, and the cloud profile with its timings
scaled down so a suite stays fast while every harsh behaviour still happens."""

from __future__ import annotations

from typing import Any

from kiln.emulator import EmulatorConfig

# A PAT the cloud test profile knows as such (platform auth tells API keys and PATs apart).
TEST_PAT = "kiln-testing-pat-0123456789abcdef"
# The cloud profile's parts at test speed: a sandbox pending for a few polls, erroring for the
# first of them (the official client survives no longer a 502 window, see kiln.emulator.CLOUD);
# streams closed after a second of silence and five seconds of age; keepalive comments often
# enough that every silent stream carries some.
CLOUD_TEST_TIMINGS: dict[str, Any] = {
    "start_delay_ms": 150,
    "pending_errors_ms": 20,
    "stream_idle_ms": 1000,
    "stream_max_ms": 5000,
    "sse_keepalive_ms": 200,
}


def emulator_config(profile: str = "ideal", **overrides: Any) -> EmulatorConfig:
    """An emulator configuration for tests: ``ideal``, or ``cloud`` with scaled timings.

    ``overrides`` are :class:`~kiln.emulator.EmulatorConfig` fields (``data_dir``, a timing...).
    """
    if profile == "cloud":
        chosen = {"pat": TEST_PAT, **CLOUD_TEST_TIMINGS, **overrides}
        return EmulatorConfig(profile="cloud", **chosen)
    return EmulatorConfig(profile="ideal", **overrides)
