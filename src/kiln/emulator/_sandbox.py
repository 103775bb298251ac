"""A virtual sandbox: lifecycle timing, its filesystem, its processes and its kernel's evidence."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import attrs

from kiln.emulator._process import KILLED, Process
from kiln.emulator._vfs import VirtualFS

# Sent back so clients exercise their route-hint header; the emulator itself routes by sandbox id.
ROUTING_HINT = "kiln-emulator"
PENDING = "pending"
RUNNING = "running"
TERMINATED = "terminated"

# What `dmesg` shows on a healthy builder VM: boot noise that must not look like OOM evidence.
BOOT_DMESG = (
    "[    0.000000] Linux version 6.1.0-kiln-emulator (emulated kernel)",
    "[    0.412345] EXT4-fs (vda1): mounted filesystem with ordered data mode",
    "[    1.023456] eth0: link becomes ready",
)


@attrs.define(eq=False)
class Sandbox:
    id: str
    namespace: str
    image: str
    cpus: float
    memory_mb: int
    disk_mb: int
    timeout_secs: int
    fs: VirtualFS
    ready_at: float
    # Until then GET answers 502 PROXY_ERROR, as the platform does right after create.
    errors_until: float = 0.0
    created_at: float = attrs.field(factory=time.time)
    last_activity: float = attrs.field(factory=time.monotonic)
    terminated_reason: str | None = None
    processes: dict[int, Process] = attrs.field(factory=dict)
    tasks: set[asyncio.Task[None]] = attrs.field(factory=set)
    dmesg: list[str] = attrs.field(factory=lambda: list(BOOT_DMESG))
    disk_full: bool = False

    def status(self, now: float) -> str:
        if self.terminated_reason is not None:
            return TERMINATED
        return PENDING if now < self.ready_at else RUNNING

    def expired(self, now: float) -> bool:
        """Idle for longer than its timeout: nothing (no proxy traffic) kept it alive."""
        return self.terminated_reason is None and now > self.last_activity + self.timeout_secs

    def touch(self, now: float) -> None:
        self.last_activity = now

    def next_pid(self) -> int:
        return max(self.processes, default=0) + 1

    def terminate(self, reason: str) -> None:
        """Stop everything it runs and drop its files, like a VM being torn down."""
        if self.terminated_reason is not None:
            return
        self.terminated_reason = reason
        for task in self.tasks:
            task.cancel()
        for process in self.processes.values():
            process.finish(KILLED)
        self.fs.destroy()

    def describe(self, sandbox_url: str) -> dict[str, Any]:
        """The lifecycle API's view, with every field the official client requires.

        ``id`` is deliberately absent: the official client reads it as an alias of ``sandbox_id``
        and refuses a body carrying both ("duplicate field `sandbox_id`"). ``sandbox_url`` is
        absent until the sandbox runs: the platform has no address for it before.
        """
        status = self.status(time.monotonic())
        described: dict[str, Any] = {
            "sandbox_id": self.id,
            "namespace": self.namespace,
            "status": status,
            "image": self.image,
            "resources": {
                "cpus": self.cpus,
                "memory_mb": self.memory_mb,
                "disk_mb": self.disk_mb,
                "ephemeral_disk_mb": self.disk_mb,
            },
            "timeout_secs": self.timeout_secs,
            "routing_hint": ROUTING_HINT,
            "termination_reason": self.terminated_reason,
        }
        if status == RUNNING:
            described["sandbox_url"] = sandbox_url
        return described
