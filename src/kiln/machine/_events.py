"""Typed build events: what a caller's ``on_event`` callback and ``Build.events()`` receive.

``to_dict()`` gives the shape the official client's Python callback uses
(``{"type": "status"|"build_log"|"warning", "message", ["stream"]}``), plus ``transition``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs


@attrs.frozen
class StatusEvent:
    type: ClassVar[str] = "status"
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "message": self.message}


@attrs.frozen
class BuildLogEvent:
    type: ClassVar[str] = "build_log"
    message: str
    stream: str = "stdout"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "message": self.message, "stream": self.stream}


@attrs.frozen
class WarningEvent:
    type: ClassVar[str] = "warning"
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "message": self.message}


@attrs.frozen
class TransitionEvent:
    type: ClassVar[str] = "transition"
    source: str
    dest: str
    trigger: str
    # Time spent in ``source`` since it was first entered (all attempts together).
    duration_s: float
    # Why: a retry's failed attempt (the error it raised); absent for other triggers.
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "type": self.type,
            "source": self.source,
            "dest": self.dest,
            "trigger": self.trigger,
            "duration_s": self.duration_s,
        }
        if self.reason is not None:
            data["reason"] = self.reason
        return data


Event = StatusEvent | BuildLogEvent | WarningEvent | TransitionEvent
