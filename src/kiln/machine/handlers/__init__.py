"""One handler per state of states/build.toml.

A handler is ``async (state, services) -> Outcome``: it does its state's one thing, records
what happened in the state, and never fires a trigger itself (the driver does). Its docstring's
first line says what it does when entered a second time, which is what resuming a build means.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from kiln.machine._outcome import Outcome
from kiln.machine._services import Services
from kiln.machine._state import BuildState
from kiln.machine.handlers.builder import run_builder
from kiln.machine.handlers.cleanup import cleanup
from kiln.machine.handlers.finish import complete, read_metadata
from kiln.machine.handlers.prepare import prepare
from kiln.machine.handlers.sandbox import create_sandbox, proxy_ready, wait_running
from kiln.machine.handlers.scope import resolve_scope
from kiln.machine.handlers.sign import sign
from kiln.machine.handlers.upload import upload

Handler = Callable[[BuildState, Services], Awaitable[Outcome]]

HANDLERS: Mapping[str, Handler] = {
    "resolve_scope": resolve_scope,
    "prepare": prepare,
    "create_sandbox": create_sandbox,
    "wait_running": wait_running,
    "proxy_ready": proxy_ready,
    "sign": sign,
    "upload": upload,
    "run_builder": run_builder,
    "read_metadata": read_metadata,
    "complete": complete,
    "cleanup": cleanup,
}

__all__ = ["HANDLERS", "Handler"]
