"""What a built-in command sees while it runs, shared by the command table and the builder."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from kiln.emulator._blobs import BlobStore
from kiln.emulator._config import BuilderBehaviour
from kiln.emulator._process import Process
from kiln.emulator._sandbox import Sandbox
from kiln.emulator._vfs import Actor, normalize

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
# The directory every build step works in; the df diagnostic reports on it first.
REMOTE_BUILD_DIR = "/var/lib/tensorlake/rootfs-builder/build"


@attrs.define
class CommandContext:
    """A running command's sandbox, process record and identity, plus what the builder needs."""

    sandbox: Sandbox
    process: Process
    user: Actor
    cwd: str
    blobs: BlobStore
    behaviour: BuilderBehaviour
    # Registries whose images need credentials: host -> (user, password).
    private_registries: Mapping[str, tuple[str, str]] = attrs.field(factory=dict)

    def err(self, line: str) -> None:
        self.process.emit(line, "stderr")

    def path(self, given: str) -> str:
        return normalize(given if given.startswith("/") else f"{self.cwd}/{given}")
