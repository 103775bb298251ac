"""Times as kiln shows them to programs: ISO 8601, UTC, whatever the machine's zone."""

from __future__ import annotations

from datetime import UTC, datetime


def iso8601(seconds: float) -> str:
    """``seconds`` since the epoch as ISO 8601 in UTC, to the millisecond
    (``2026-12-02T15:03:11.123+00:00``)."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
