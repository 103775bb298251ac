"""Signals while a build runs: Ctrl-C, SIGTERM and SIGHUP all cancel it the same way.

A service manager stops kiln with SIGTERM, a closed terminal sends SIGHUP: each means "stop", as
the first Ctrl-C does, so each cancels the build, whose cleanup deletes the builder sandbox. The
exit status then names the signal as a shell would (128 + its number: 130, 143, 129). A second
signal gives up on cleanup and exits at once, naming the sandbox that may be left behind.

Before the build exists the signals keep their default actions: Ctrl-C is the dispatcher's
KeyboardInterrupt (exit 130), SIGTERM and SIGHUP end the process, and nothing remote exists yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

from kiln.cli._exit import EXIT_CANCELLED, exit_for_signal

if TYPE_CHECKING:
    from kiln.cli._view import View
    from kiln.machine import BuildState

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_CANCELLING = {
    signal.SIGINT: "Cancelling: deleting the builder sandbox (Ctrl-C again to abort cleanup)",
    signal.SIGTERM: "Terminated: cancelling, deleting the builder sandbox"
    " (a second signal aborts cleanup)",
    signal.SIGHUP: "Hangup: cancelling, deleting the builder sandbox"
    " (a second signal aborts cleanup)",
}


# What a CAS build's cancel does instead (it holds no builder sandbox; states/cas.toml).
_SANDBOX_CLEANUP = "deleting the builder sandbox"
_REMOTE_CANCEL = "cancelling its build on the Image Service"


def cancelling_notice(signum: signal.Signals, state: BuildState) -> str:
    """What the first stop signal says it does to this build."""
    notice = _CANCELLING[signum]
    return notice.replace(_SANDBOX_CLEANUP, _REMOTE_CANCEL) if state.cas is not None else notice


class Cancellable(Protocol):
    """What the handler needs of a build (kiln.Build)."""

    @property
    def state(self) -> BuildState: ...

    def cancel(self) -> None: ...


class Interrupts:
    """The signals received while a build ran: the first cancels it, a second exits at once."""

    def __init__(self, build: Cancellable, view: View, *, embedded: bool) -> None:
        self._build = build
        self._view = view
        self._embedded = embedded
        self.first: signal.Signals | None = None

    def exit_code(self, code: int) -> int:
        """The exit status for a build that ended with ``code``: a build cancelled by a signal
        exits as that signal would (143 for SIGTERM, 129 for SIGHUP)."""
        if code == EXIT_CANCELLED and self.first is not None:
            return exit_for_signal(self.first)
        return code

    def received(self, signum: signal.Signals) -> None:
        if self.first is None:
            self.first = signum
            self._say(lambda: self._view.notice(cancelling_notice(signum, self._build.state)))
            self._build.cancel()
            return
        self._say(lambda: self._view.aborted(self._build.state, embedded=self._embedded))
        # Waiting for anything now (a slow delete, the loop's task teardown) is what the user
        # just refused. The store already holds the state at its last transition, so
        # `kiln resume` can still finish the cleanup.
        os._exit(exit_for_signal(signum))

    @staticmethod
    def _say(show: Callable[[], None]) -> None:
        # After SIGHUP the terminal may be gone: a failed write must not stop the cancel.
        with contextlib.suppress(OSError):
            show()


@contextlib.contextmanager
def interrupts(build: Cancellable, view: View, *, embedded: bool = False) -> Iterator[Interrupts]:
    """Route Ctrl-C, SIGTERM and SIGHUP to the build while the block runs.

    ``embedded``: the build runs on the embedded emulator, whose sandboxes end with kiln.
    """
    loop = asyncio.get_running_loop()
    handler = Interrupts(build, view, embedded=embedded)
    installed: list[signal.Signals] = []
    try:
        for signum in STOP_SIGNALS:
            try:
                loop.add_signal_handler(signum, handler.received, signum)
            except (NotImplementedError, RuntimeError):  # not the main thread: leave defaults
                break
            installed.append(signum)
        yield handler
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
