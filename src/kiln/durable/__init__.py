"""Durable builds: persisted state, resume after a crash, cross-process cancel, orphan reaping.

A :class:`Session` plugs a :mod:`kiln.store` store into the build machine's driver: the state and
the build's events are written after every transition (and checkpointed while a phase runs), the
build is owned under a renewed lease, and a cancel recorded by another process is noticed within
about :data:`POLL_S` seconds. :func:`prepare_resume` gets a persisted state ready to run again;
:func:`reap` deletes the builder sandboxes no live build will delete.
"""

from kiln.durable._reap import (
    ABANDONED_AFTER_S,
    Orphan,
    UnattendedRemoteBuild,
    machine_of,
    reap,
    unattended_remote_builds,
    unrecorded,
)
from kiln.durable._resume import SANDBOX_LOST, load_state, prepare_resume
from kiln.durable._session import KILL_AFTER_TRANSITION_ENV, POLL_S, STORE_OUTAGE_S, Session
from kiln.durable._unrecorded import UnrecordedSandbox, unrecorded_sandboxes
from kiln.errors import BuildHandedOver, StoreOutage, UnreadableBuild

__all__ = [
    "ABANDONED_AFTER_S",
    "KILL_AFTER_TRANSITION_ENV",
    "POLL_S",
    "SANDBOX_LOST",
    "STORE_OUTAGE_S",
    "BuildHandedOver",
    "Orphan",
    "Session",
    "StoreOutage",
    "UnattendedRemoteBuild",
    "UnreadableBuild",
    "UnrecordedSandbox",
    "load_state",
    "machine_of",
    "prepare_resume",
    "reap",
    "unattended_remote_builds",
    "unrecorded",
    "unrecorded_sandboxes",
]
