"""A local server that speaks Tensorlake's sandbox-image build protocol.

It serves the platform API (template lookup, prepare, complete, key introspection; API-key and
PAT routes), the Image Service (``/images/v4``: the CAS path, see docs/image-service.md), the
sandbox lifecycle API and the in-sandbox proxy API on one loopback port. Sandboxes
are virtual: each has its own directory on the host, ownership and modes are tracked as metadata,
and commands are a built-in table (``true``, ``mkdir``, ``chmod``, ``rm``, ``tar -x``, the two
diagnostic ``sh -lc`` scripts and the ``tl-rootfs-build`` stand-in); nothing runs on the host.

The builder stand-in logs one line per Dockerfile instruction (RUN steps are not executed) and
uploads a snapshot archive holding ``spec.json`` and ``context/<path>`` for every context file.

``/_emulator/`` is the emulator's own surface, never part of Tensorlake's:

- ``POST /_emulator/builder``: builder behaviour (``exit_code``, ``oom_kill``, ``enospc``,
  ``signal``, ``duration_ms``, ``log_lines``, ``line_pace_ms``); ``GET`` shows it.
- ``GET /_emulator/sandboxes``, ``/processes``, ``/templates``, ``/image-builds``: introspection.
- ``POST /_emulator/sandboxes/<id>/terminate``: end a sandbox now, pending ones included.
- ``POST /_emulator/reset``: forget everything, including faults and the request log.
- ``POST|GET|DELETE /_emulator/faults``, ``GET /_emulator/requests``: see ``middleware``.
- ``PUT|GET /_emulator/blobs/<key>``, ``GET /_emulator/blobs?uri=s3://kiln-emulator/<key>``.

Run it with ``kiln emulator``, or in-process::

    with Emulator(EmulatorConfig()) as emu:        # or: async with
        ...  # point kiln or the official client at emu.url
"""

import importlib
from typing import TYPE_CHECKING, Any

from kiln.emulator._config import (
    CLOUD,
    DEFAULT_HOST,
    IDEAL,
    PROFILES,
    SIGN_MODES,
    SSE_FRAMINGS,
    BuilderBehaviour,
    EmulatorConfig,
    Profile,
    ProfileDefaults,
    SignMode,
    is_loopback,
)

if TYPE_CHECKING:
    from kiln.emulator._app import create_app
    from kiln.emulator._server import Emulator, start_emulator

# The server and its app load Starlette and uvicorn: imported on first use, so that reading the
# configuration (the CLI's options, the pytest plugin's) costs none of that.
_SERVER_EXPORTS = {
    "Emulator": "kiln.emulator._server",
    "create_app": "kiln.emulator._app",
    "start_emulator": "kiln.emulator._server",
}


def __getattr__(name: str) -> Any:
    module = _SERVER_EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kiln.emulator' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "CLOUD",
    "DEFAULT_HOST",
    "IDEAL",
    "PROFILES",
    "SIGN_MODES",
    "SSE_FRAMINGS",
    "BuilderBehaviour",
    "Emulator",
    "EmulatorConfig",
    "Profile",
    "ProfileDefaults",
    "SignMode",
    "create_app",
    "is_loopback",
    "start_emulator",
]
