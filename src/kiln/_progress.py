"""Which progress reports go out: one rule for every progress line kiln shows."""

from __future__ import annotations

FULL_PERCENT = 100


def percent_done(done: int, total: int | None) -> int:
    """Whole percent of ``total`` done; 0 while the total is unknown or zero."""
    return done * FULL_PERCENT // total if total else 0


class ProgressGate:
    """Lets through the first report; then one each time the whole percent done has risen by
    ``percent_step``, or ``every_bytes`` more are done (for totals so large that a percent is
    minutes apart, or unknown); and the last, unless it was the one just let through.

    Reports are what a person reads: a line per byte or per chunk would drown the log, and
    silence for minutes would look like a hang.
    """

    def __init__(self, *, percent_step: int = 1, every_bytes: int | None = None) -> None:
        self._percent_step = percent_step
        self._every_bytes = every_bytes
        self._reported_done: int | None = None
        self._reported_percent = 0

    def due(self, done: int, total: int | None) -> bool:
        """Whether a report of ``done`` out of ``total`` goes out; if so, it counts as made."""
        percent = percent_done(done, total)
        if self._reported_done is not None:
            risen = percent >= self._reported_percent + self._percent_step
            grown = self._every_bytes is not None and (
                done - self._reported_done >= self._every_bytes
            )
            if not (risen or grown):
                return False
        self._reported_done, self._reported_percent = done, percent
        return True

    def last_due(self, done: int) -> bool:
        """Whether the final report of ``done`` goes out: not when it was just made, unless
        nothing was done (the start and the end of an empty transfer are both shown)."""
        due = done != self._reported_done or done == 0
        self._reported_done = done
        return due
