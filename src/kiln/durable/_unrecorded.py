"""Builder sandboxes kiln asked for but may not know the id of.

A build persists its create request before sending it (``sandbox_request``), and keeps earlier
requests whose answer was never recorded (``unrecorded_sandboxes``): a process killed between
the platform creating the sandbox and the store recording its id. The platform's API (as the
reference shows it) finds a sandbox only by its id, so kiln cannot delete such a sandbox; what
it can do is never be silent about it: ``kiln status``, ``kiln reap`` and the worker name it
(the ``name`` sent with the request) and say when it ends on its own (its idle timeout).
"""

from __future__ import annotations

import datetime
from typing import Any

import attrs

from kiln.store import BuildRecord


@attrs.frozen
class UnrecordedSandbox:
    """A create request of ``build_id`` whose sandbox, if it was made, may still run."""

    build_id: str
    name: str
    requested_at: float
    expires_by: float

    def describe(self) -> str:
        return (
            f"a builder sandbox named {self.name} (create requested {_iso(self.requested_at)})"
            " may exist without its id being recorded; kiln cannot delete it, it ends on its"
            f" own by {_iso(self.expires_by)}"
        )

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def holds_sandbox(data: dict[str, Any], now: float) -> bool:
    """Whether a build in this persisted state may have a builder sandbox running: a recorded
    one not yet deleted, or one an unanswered create request may have made (the store's
    ``holds_sandbox`` mark, which the reaper reads by index)."""
    if data.get("sandbox_id") is not None and not data.get("sandbox_deleted"):
        return True
    return bool(_requests(data, now, in_flight=True))


def unrecorded_sandboxes(
    record: BuildRecord, now: float, *, in_flight: bool = True
) -> list[UnrecordedSandbox]:
    """The create requests of this build whose sandbox may exist unrecorded and not yet ended.

    ``in_flight=False`` leaves out the current request of a build a live process runs: its
    answer may still be recorded. Read from the raw record, as the reaper reads it."""
    return [
        UnrecordedSandbox(
            build_id=record.id,
            name=str(request["name"]),
            requested_at=float(request["requested_at"]),
            expires_by=float(request["expires_by"]),
        )
        for request in _requests(record.data, now, in_flight=in_flight)
    ]


def _requests(data: dict[str, Any], now: float, *, in_flight: bool) -> list[dict[str, Any]]:
    requests: list[dict[str, Any]] = list(data.get("unrecorded_sandboxes") or [])
    pending = data.get("sandbox_request")
    if in_flight and pending and data.get("sandbox_id") is None:
        # Asked for and not answered as far as the store knows: in flight, or lost with its
        # process. Either way a sandbox may exist that nobody can name.
        requests.append(pending)
    return [request for request in requests if float(request["expires_by"]) > now]


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC).isoformat(timespec="seconds")
