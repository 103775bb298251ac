"""Typed build events: what a caller's ``on_event`` callback and ``Build.events()`` receive.

``to_dict()`` is the one event schema (``docs/events.schema.json``), the library's and the CLI's
``--json`` lines alike: the kind under ``type`` (the official client's Python callback names it
so: ``status``, ``build_log``, ``warning``; kiln adds ``transition`` and ``cached``), ``time`` (ISO 8601), kiln's
build id ``id`` and the platform's ``build_id`` (None until they are known), then the kind's own
fields, which ``payload()`` gives alone (the store's event log keeps only those: its rows have
their own time and belong to one build).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Self

import attrs

from kiln._time import iso8601


@attrs.frozen
class _Event:
    """What every event carries besides its own fields; none of it counts in equality, so an
    event compares by what it says."""

    type: ClassVar[str]
    # When it happened: seconds since the epoch (wall clock).
    time: float = attrs.field(factory=time.time, kw_only=True, eq=False)
    # kiln's build id (what `kiln resume` takes); set when the event is delivered.
    id: str | None = attrs.field(default=None, kw_only=True, eq=False)
    # The platform's build id, once prepare has returned it.
    build_id: str | None = attrs.field(default=None, kw_only=True, eq=False)

    def payload(self) -> dict[str, Any]:
        """The kind's own fields."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "time": iso8601(self.time),
            "id": self.id,
            "build_id": self.build_id,
            **self.payload(),
        }

    def in_build(self, id: str, build_id: str | None) -> Self:
        """The event, stamped with the build it belongs to."""
        return attrs.evolve(self, id=id, build_id=build_id)


@attrs.frozen
class StatusEvent(_Event):
    type: ClassVar[str] = "status"
    message: str

    def payload(self) -> dict[str, Any]:
        return {"message": self.message}


@attrs.frozen
class BuildLogEvent(_Event):
    type: ClassVar[str] = "build_log"
    message: str
    stream: str = "stdout"

    def payload(self) -> dict[str, Any]:
        return {"message": self.message, "stream": self.stream}


@attrs.frozen
class WarningEvent(_Event):
    type: ClassVar[str] = "warning"
    message: str

    def payload(self) -> dict[str, Any]:
        return {"message": self.message}


@attrs.frozen
class TransitionEvent(_Event):
    type: ClassVar[str] = "transition"
    source: str
    dest: str
    trigger: str
    # Time spent in ``source`` since it was first entered (all attempts together).
    duration_s: float
    # Why: a retry's failed attempt (the error it raised); absent for other triggers.
    reason: str | None = None

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "source": self.source,
            "dest": self.dest,
            "trigger": self.trigger,
            "duration_s": self.duration_s,
        }
        if self.reason is not None:
            data["reason"] = self.reason
        return data


@attrs.frozen
class CachedEvent(_Event):
    """The build ended at once: an earlier build with the same key registered ``template_id``,
    which is still registered under that id (its transition, ``cache_hit``, follows)."""

    type: ClassVar[str] = "cached"
    key: str
    template_id: str
    # kiln's id of the earlier build whose template is returned.
    cached_from: str

    def payload(self) -> dict[str, Any]:
        return {
            "cached": True,
            "key": self.key,
            "template_id": self.template_id,
            "cached_from": self.cached_from,
        }


Event = StatusEvent | BuildLogEvent | WarningEvent | TransitionEvent | CachedEvent
