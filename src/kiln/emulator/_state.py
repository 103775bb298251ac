"""Everything one emulator instance knows, owned by its event loop.

Sandboxes, processes and in-flight builds live in memory (a restarted emulator has none, like a
platform after a crash); templates and blobs live under the data directory and survive restarts.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import attrs
import structlog

from kiln.emulator._blobs import BlobStore
from kiln.emulator._commands import run_command
from kiln.emulator._config import BuilderBehaviour, EmulatorConfig
from kiln.emulator._context import EXIT_FAILURE, CommandContext
from kiln.emulator._image_service import ImageService
from kiln.emulator._process import KILLED, Process, exited
from kiln.emulator._sandbox import Sandbox
from kiln.emulator._templates import TemplateStore
from kiln.emulator._vfs import ROOT, SANDBOX_USER, VirtualFS
from kiln.emulator.middleware import FaultRules, RequestLog

_log = structlog.get_logger("kiln.emulator")
_MS = 1000.0
_ID_BYTES = 8


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_dead_instances(sandboxes: Path) -> None:
    """Drop the sandbox files of emulators whose process is gone (``<pid>-<token>`` dirs)."""
    if not sandboxes.is_dir():
        return
    for instance in sandboxes.iterdir():
        owner = instance.name.split("-", 1)[0]
        if not (owner.isdigit() and _pid_alive(int(owner))):
            shutil.rmtree(instance, ignore_errors=True)


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(_ID_BYTES)}"


@attrs.frozen
class SandboxRequest:
    namespace: str
    image: str
    cpus: float
    memory_mb: int
    disk_mb: int
    timeout_secs: int


@attrs.frozen
class ProcessRequest:
    command: str
    args: list[str]
    root: bool
    working_dir: str
    timeout_s: float | None


@attrs.define
class Build:
    """A prepared build waiting for its complete call."""

    id: str
    name: str
    snapshot_id: str
    snapshot_uri: str
    rootfs_node_kind: str
    parent: dict[str, Any] | None
    public: bool
    completed: bool = False


class EmulatorState:
    def __init__(self, config: EmulatorConfig, data_dir: Path) -> None:
        self.config = config
        self.data_dir = data_dir
        self.blobs = BlobStore(data_dir / "blobs")
        self.templates = TemplateStore(data_dir / "templates.json")
        self.faults = FaultRules()
        self.requests = RequestLog()
        self.behaviour: BuilderBehaviour = config.builder
        self.sandboxes: dict[str, Sandbox] = {}
        # Set by the server when the proxy listens on a port of its own (the cloud profile).
        self.proxy_url: str | None = None
        self.proxy_port: int | None = None
        self.builds: dict[str, Build] = {}
        # The Image Service (/images/v4): its builds, run in sandboxes of this state.
        self.images = ImageService(self)
        # Each emulator keeps its sandboxes' files in a directory of its own (other processes may
        # share the data directory); those of emulators that no longer run are removed.
        sandboxes = data_dir / "sandboxes"
        _remove_dead_instances(sandboxes)
        self.sandbox_root = sandboxes / f"{os.getpid()}-{secrets.token_hex(_ID_BYTES)}"

    def create_sandbox(self, request: SandboxRequest) -> Sandbox:
        sandbox_id = new_id("sbx")
        now = time.monotonic()
        sandbox = Sandbox(
            id=sandbox_id,
            namespace=request.namespace,
            image=request.image,
            cpus=request.cpus,
            memory_mb=request.memory_mb,
            disk_mb=request.disk_mb,
            timeout_secs=request.timeout_secs,
            fs=VirtualFS(self.sandbox_root / sandbox_id),
            ready_at=now + self.config.start_delay_ms / _MS,
            errors_until=now + self.config.pending_errors_ms / _MS,
            last_activity=now,
        )
        self.sandboxes[sandbox_id] = sandbox
        return sandbox

    def sandbox(self, sandbox_id: str) -> Sandbox | None:
        self.reap()
        return self.sandboxes.get(sandbox_id)

    def reap(self) -> None:
        """Terminate every sandbox whose timeout ran out with nothing keeping it alive."""
        now = time.monotonic()
        for sandbox in self.sandboxes.values():
            if sandbox.expired(now):
                sandbox.terminate("timeout")

    def start_process(self, sandbox: Sandbox, request: ProcessRequest) -> Process:
        process = Process(
            pid=sandbox.next_pid(),
            command=request.command,
            args=request.args,
            user=ROOT if request.root else SANDBOX_USER,
        )
        sandbox.processes[process.pid] = process
        ctx = CommandContext(
            sandbox=sandbox,
            process=process,
            user=process.user,
            cwd=request.working_dir,
            blobs=self.blobs,
            behaviour=self.behaviour,
            private_registries=self.config.private_registries,
        )
        task = asyncio.create_task(_supervise(ctx, request))
        sandbox.tasks.add(task)
        task.add_done_callback(sandbox.tasks.discard)
        return process

    def reset(self) -> None:
        self.terminate_all("emulator reset")
        self.images.clear()
        self.sandboxes.clear()
        self.builds.clear()
        self.templates.clear()
        self.blobs.clear()
        self.faults.clear()
        self.requests.clear()
        self.behaviour = self.config.builder

    def terminate_all(self, reason: str) -> None:
        self.images.stop_all(reason)
        for sandbox in self.sandboxes.values():
            sandbox.terminate(reason)


async def _supervise(ctx: CommandContext, request: ProcessRequest) -> None:
    """Run one command to its end, enforcing the request's timeout like the daemon's SIGKILL."""
    try:
        end = await asyncio.wait_for(
            run_command(ctx, request.command, request.args), timeout=request.timeout_s
        )
    except TimeoutError:
        ctx.err(f"{request.command}: killed after its {request.timeout_s:g}s timeout")
        end = KILLED
    except Exception:
        # A bug in a built-in must still end the process, or every follower would hang forever.
        _log.exception("emulator_command_crashed", command=request.command)
        ctx.err(f"{request.command}: internal emulator error; see the emulator's log")
        end = exited(EXIT_FAILURE)
    ctx.process.finish(end)
