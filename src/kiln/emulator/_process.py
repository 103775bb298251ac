"""One process in a virtual sandbox: its recorded output and how it ended.

Output is kept whole for the process's life because every follow request replays it from the
start (the contract the client's reattach logic depends on).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import attrs

from kiln.emulator._vfs import Actor

RUNNING = "running"
EXITED = "exited"
SIGNALED = "signaled"
OOM_KILLED = "oom_killed"
SIGKILL = 9


@attrs.frozen
class Exit:
    """How a command ended: an exit code, or a signal (with the OOM flag when the kernel did it)."""

    exit_code: int | None = None
    signal: int | None = None
    oom_killed: bool = False

    @property
    def status(self) -> str:
        if self.oom_killed:
            return OOM_KILLED
        return SIGNALED if self.signal is not None else EXITED


def exited(code: int) -> Exit:
    return Exit(exit_code=code)


KILLED = Exit(signal=SIGKILL)


@attrs.define(eq=False)
class Process:
    pid: int
    command: str
    args: list[str]
    user: Actor
    started_at: float = attrs.field(factory=time.time)
    output: list[dict[str, Any]] = attrs.field(factory=list)
    end: Exit | None = None
    ended_at: float | None = None
    _changed: asyncio.Event = attrs.field(factory=asyncio.Event)

    def emit(self, line: str, stream: str = "stdout") -> None:
        self.output.append({"line": line, "timestamp": time.time(), "stream": stream})
        self._wake()

    def finish(self, end: Exit) -> None:
        if self.end is None:
            self.end = end
            self.ended_at = time.time()
            self._wake()

    def _wake(self) -> None:
        # One event per generation: waiters hold the old one, which stays set.
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self) -> AsyncIterator[dict[str, Any]]:
        """All output from the first line, then live lines, ending once the process has ended."""
        index = 0
        while True:
            while index < len(self.output):
                yield self.output[index]
                index += 1
            if self.end is not None:
                return
            await self._changed.wait()

    async def wait(self) -> Exit:
        while self.end is None:
            await self._changed.wait()
        return self.end

    def info(self) -> dict[str, Any]:
        """The daemon's ProcessInfo; ``managed`` is omitted on purpose (clients then require less)."""
        end = self.end or Exit()
        return {
            "pid": self.pid,
            "status": RUNNING if self.end is None else end.status,
            "command": self.command,
            "args": self.args,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "exit_code": end.exit_code,
            "signal": end.signal,
            "oom_killed": end.oom_killed,
            "stdin_writable": False,
        }
