"""The handlers of each declared machine: one per state of states/<machine>.toml.

A handler is ``async (state, services) -> Outcome``: it does its state's one thing, records
what happened in the state, and never fires a trigger itself (the driver does). It is named
after its state (the registry is keyed by the function's name, and checked against the
declaration), and its docstring's first line says what it does when entered a second time,
which is what resuming a build means.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import attrs

from kiln.errors import ConfigError
from kiln.machine._outcome import Outcome
from kiln.machine._services import Services
from kiln.machine._spec import BUILD_MACHINE, MachineSpec
from kiln.machine._state import BuildState
from kiln.machine.handlers import cas
from kiln.machine.handlers.builder import run_builder
from kiln.machine.handlers.cleanup import cleanup
from kiln.machine.handlers.diagnostics import explain
from kiln.machine.handlers.finish import complete, read_metadata
from kiln.machine.handlers.prepare import prepare
from kiln.machine.handlers.sandbox import create_sandbox, wait_running
from kiln.machine.handlers.scope import resolve_scope
from kiln.machine.handlers.sign import sign
from kiln.machine.handlers.upload import upload

Handler = Callable[[BuildState, Services], Awaitable[Outcome]]
# Turns a failure into the error the caller sees; ``diagnoses`` is the failing state's property.
Explain = Callable[..., Awaitable[BaseException]]


@attrs.frozen
class MachineHandlers:
    """What a machine's states run, by state name, and how its failures are explained."""

    by_state: Mapping[str, Handler]
    explain: Explain


def _by_name(*handlers: Handler) -> Mapping[str, Handler]:
    return {handler.__name__: handler for handler in handlers}


HANDLERS: Mapping[str, Handler] = _by_name(
    resolve_scope,
    prepare,
    create_sandbox,
    wait_running,
    sign,
    upload,
    run_builder,
    read_metadata,
    complete,
    cleanup,
)
CAS_MACHINE = "cas"
CAS_HANDLERS: Mapping[str, Handler] = _by_name(
    resolve_scope,
    cas.resolve_names,
    cas.create_build,
    cas.upload_context,
    cas.seal_context,
    cas.wait_build,
    cas.release,
)
# Every declared machine's handlers, by the machine's name (its states/<name>.toml).
MACHINES: Mapping[str, MachineHandlers] = {
    BUILD_MACHINE: MachineHandlers(by_state=HANDLERS, explain=explain),
    CAS_MACHINE: MachineHandlers(by_state=CAS_HANDLERS, explain=cas.explain),
}


def handlers_for(spec: MachineSpec) -> MachineHandlers:
    """The handlers of the machine ``spec`` declares; ConfigError when a state has none."""
    found = MACHINES.get(spec.name)
    missing = sorted(set(spec.states) - set(found.by_state if found else ()))
    if found is None or missing:
        raise ConfigError(
            f"machine {spec.name!r}: no handler for {missing or 'any state'}",
            hint="register one per declared state in kiln.machine.handlers.MACHINES",
        )
    return found


__all__ = [
    "CAS_HANDLERS",
    "CAS_MACHINE",
    "HANDLERS",
    "MACHINES",
    "Handler",
    "MachineHandlers",
    "handlers_for",
]
