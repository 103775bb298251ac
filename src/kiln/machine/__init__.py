"""kiln.machine: the build state machine declared in states/build.toml, and its driver.

``load_machine_spec()`` reads the declaration, ``Driver(services, persist=...).run(state)`` drives a
``BuildState`` from whatever state it names to ``done``, ``failed`` or ``cancelled``; resuming
a build is running the driver on a state loaded from the store (``BuildState.from_json``).
"""

from kiln.machine._diagram import render_dot, render_mermaid
from kiln.machine._driver import CLEANUP_GRACE_S, Driver, PersistHook, no_persist
from kiln.machine._events import (
    BuildLogEvent,
    Event,
    StatusEvent,
    TransitionEvent,
    WarningEvent,
)
from kiln.machine._outcome import Outcome, Trigger
from kiln.machine._services import Clock, Secrets, Services
from kiln.machine._spec import Backoff, MachineSpec, StateSpec, default_spec_path, load_machine_spec
from kiln.machine._state import (
    SCHEMA_VERSION,
    BuilderInfo,
    BuildOptions,
    BuildState,
    ErrorRecord,
    PreparedInfo,
    SandboxRequest,
)
from kiln.machine.handlers import HANDLERS

__all__ = [
    "CLEANUP_GRACE_S",
    "HANDLERS",
    "SCHEMA_VERSION",
    "Backoff",
    "BuildLogEvent",
    "BuildOptions",
    "BuildState",
    "BuilderInfo",
    "Clock",
    "Driver",
    "ErrorRecord",
    "Event",
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
    "load_machine_spec",
    "no_persist",
    "render_dot",
    "render_mermaid",
]
