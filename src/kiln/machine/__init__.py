"""kiln.machine: the machines declared in states/ (the build's: states/build.toml; the Image
Service's: states/cas.toml), and their driver.

``load_machine_spec()`` reads the declaration, ``Driver(services, persist=...).run(state)`` drives a
``BuildState`` from whatever state it names to a final state (``done``, ``failed`` or
``cancelled``); resuming a build is running the driver on a state loaded from the store
(``BuildState.from_json``). ``intervene()`` fires a declared intervention on a build nobody runs.
"""

from kiln.machine._diagram import render_dot, render_mermaid
from kiln.machine._driver import Driver, PersistHook, no_persist
from kiln.machine._events import (
    BuildLogEvent,
    CachedEvent,
    Event,
    StatusEvent,
    TransitionEvent,
    WarningEvent,
)
from kiln.machine._outcome import Outcome, Trigger
from kiln.machine._services import Clock, Secrets, Services
from kiln.machine._spec import (
    BUILD_MACHINE,
    Backoff,
    Intervention,
    MachineSpec,
    StateSpec,
    default_spec_path,
    load_machine_spec,
    machine_names,
)
from kiln.machine._state import (
    OPTION_CLI,
    OPTION_IN_KEY,
    OPTION_KEYWORD,
    SCHEMA_VERSION,
    BuildOptions,
    BuildState,
    CacheKey,
    CasProgress,
    ErrorRecord,
    PreparedInfo,
    SandboxRequest,
)
from kiln.machine._transitions import event_entry, fire, intervene
from kiln.machine.handlers import CAS_MACHINE, HANDLERS, MACHINES, handlers_for

__all__ = [
    "BUILD_MACHINE",
    "CAS_MACHINE",
    "HANDLERS",
    "MACHINES",
    "OPTION_CLI",
    "OPTION_IN_KEY",
    "OPTION_KEYWORD",
    "SCHEMA_VERSION",
    "Backoff",
    "BuildLogEvent",
    "BuildOptions",
    "BuildState",
    "CacheKey",
    "CachedEvent",
    "CasProgress",
    "Clock",
    "Driver",
    "ErrorRecord",
    "Event",
    "Intervention",
    "MachineSpec",
    "Outcome",
    "PersistHook",
    "PreparedInfo",
    "SandboxRequest",
    "Secrets",
    "Services",
    "StateSpec",
    "StatusEvent",
    "TransitionEvent",
    "Trigger",
    "WarningEvent",
    "default_spec_path",
    "event_entry",
    "fire",
    "handlers_for",
    "intervene",
    "load_machine_spec",
    "machine_names",
    "no_persist",
    "render_dot",
    "render_mermaid",
]
