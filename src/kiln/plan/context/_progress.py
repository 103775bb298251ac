"""Progress through the context's file bytes, reported at a bounded rate."""

from __future__ import annotations

from collections.abc import Callable

_PROGRESS_EVERY = 64 << 20


def shifted(
    report: Callable[[int, int], None] | None, offset: int, total: int
) -> Callable[[int, int], None] | None:
    """A part's progress as progress through the whole context."""
    if report is None:
        return None
    return lambda done, _part_total: report(offset + done, total)


class Progress:
    """Reports at 0 and at the end, whenever the whole percent rises, and every 64 MiB."""

    def __init__(self, total: int, callback: Callable[[int, int], None] | None) -> None:
        self._total = total
        self._callback = callback
        self._done = 0
        self._reported_done = 0
        self._reported_percent = self._percent()
        self._report()

    def advance(self, n: int) -> None:
        self._done += n
        percent = self._percent()
        if percent > self._reported_percent or self._done - self._reported_done >= _PROGRESS_EVERY:
            self._reported_percent = percent
            self._report()

    def finish(self) -> None:
        if self._reported_done != self._total or self._total == 0:
            self._report()

    def _percent(self) -> int:
        return self._done * 100 // self._total if self._total else 0

    def _report(self) -> None:
        self._reported_done = self._done
        if self._callback is not None:
            self._callback(self._done, self._total)
