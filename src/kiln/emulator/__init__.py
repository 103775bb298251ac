"""A local server that speaks Tensorlake's sandbox-image build protocol.

It serves the platform API (templates, prepare, complete, introspect), the sandbox lifecycle API
and the in-sandbox proxy API on one loopback port, with virtual sandboxes whose commands are a
built-in table (nothing runs on the host) and a builder stand-in that produces real snapshot
archives. ``/_emulator/`` adds fault injection and introspection for tests.

    with Emulator(EmulatorConfig()) as emu:
        ...  # point kiln or the official client at emu.url
"""

from kiln.emulator._app import create_app
from kiln.emulator._config import BuilderBehaviour, EmulatorConfig, SignMode
from kiln.emulator._server import Emulator, start_emulator

__all__ = [
    "BuilderBehaviour",
    "Emulator",
    "EmulatorConfig",
    "SignMode",
    "create_app",
    "start_emulator",
]
