"""Progress through the context's file bytes, reported at a bounded rate."""

from __future__ import annotations

from collections.abc import Callable

from kiln._progress import ProgressGate

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
        self._gate = ProgressGate(every_bytes=_PROGRESS_EVERY)
        self._gate.due(0, total)
        self._report()

    def advance(self, n: int) -> None:
        self._done += n
        if self._gate.due(self._done, self._total):
            self._report()

    def finish(self) -> None:
        if self._gate.last_due(self._done):
            self._report()

    def _report(self) -> None:
        if self._callback is not None:
            self._callback(self._done, self._total)
