"""What the commands that act on a persisted build read from its record: whether a live process
runs it, whether it ran on the embedded emulator of a ``kiln`` process that has ended (then
nothing can continue it), and whether ``kiln rm`` may remove it.

A build on the embedded emulator is marked by an event ``kiln build`` appends to its log as soon
as the build is recorded: the state is the machine's and holds no word about where the API came
from, and the API URL alone (a loopback port) does not tell an embedded emulator from one a user
runs with ``kiln emulator``. The mark names the emulator's URL, never a token.
"""

from __future__ import annotations

import contextlib
import socket
import time

from kiln.errors import BuildNotFound, StoreUnavailable, UsageError
from kiln.machine import CAS_MACHINE, load_machine_spec, machine_names
from kiln.store import BuildRecord, Owner, Store, pid_alive

# The event kind of the mark; `kiln logs` prints it as any other event.
EMBEDDED_EVENT = "embedded_emulator"
# The mark is appended right after the record is created, so it is among the first events; the
# log keeps its head (HEAD_EVENTS), so it is never dropped.


def declared_states(*, unfinished: bool) -> dict[str, None]:
    """The unfinished states, or the finals, of every declared machine (states/), each once, in
    the order declared."""
    specs = [load_machine_spec(name=name) for name in machine_names()]
    return dict.fromkeys(
        name for spec in specs for name in (spec.states if unfinished else spec.finals)
    )


def running(record: BuildRecord) -> bool:
    """Whether a live process holds the build now (as far as this host can tell)."""
    lease = record.lease_expires_at
    return (
        record.owner is not None
        and lease is not None
        and lease > time.time()
        and not owner_gone(record.owner)
    )


def owner_gone(owner: Owner) -> bool:
    """Whether the owner was a process on this host that no longer exists."""
    return owner.host == socket.gethostname() and not pid_alive(owner.pid)


async def mark_embedded(store: Store, build_id: str, api_url: str | None) -> None:
    """Record that ``build_id`` runs on the embedded emulator at ``api_url``, which ends with this
    process. Best effort: a store that fails now fails the build's own next write, which says so;
    a build that ended before it was recorded has no record to mark."""
    with contextlib.suppress(BuildNotFound, StoreUnavailable):
        await store.append_events(build_id, [(EMBEDDED_EVENT, {"api_url": api_url})])


async def ran_embedded(store: Store, record: BuildRecord) -> bool:
    """Whether ``record``'s build ran on an embedded emulator (its log holds the mark)."""
    return any(event.kind == EMBEDDED_EVENT for event in await store.events(record.id))


def on_image_service(record: BuildRecord) -> bool:
    """Whether ``record``'s build runs on the Image Service (the CAS machine): it holds no
    builder sandbox of its own; what it may leave is its build there, which cancel stops."""
    return record.data.get("machine") == CAS_MACHINE


def remote_work(record: BuildRecord) -> str:
    """What a build has running on the platform, as people read it."""
    return "its build on the Image Service" if on_image_service(record) else "its builder sandbox"


def cancelling(record: BuildRecord) -> str:
    """What cancelling ``record``'s build does to its remote work."""
    if on_image_service(record):
        return "cancels its build on the Image Service"
    return "deletes its sandbox"


def dead_embedded(record: BuildRecord) -> str:
    """What to say of an unfinished build that ran on the embedded emulator of a kiln process
    that has ended: its sandbox ended with that process, so nothing can continue it."""
    return (
        f"build {record.id} ran on the embedded emulator of a kiln process that has ended (it was"
        f" in {record.state}): {remote_work(record)} ended with that process, so it cannot be"
        " resumed or cancelled"
    )


def still(record: BuildRecord) -> str:
    return "run" if on_image_service(record) else "exist"


def removal_hint(record: BuildRecord) -> str:
    return f"`kiln rm {record.id}` removes it from the store; build again to get the image"


def removal_refused(record: BuildRecord, *, embedded: bool) -> UsageError | None:
    """Why ``kiln rm`` must keep ``record``'s build, or None when it may go: a finished build
    whose sandbox is known to be gone, or an unfinished one that ran on the embedded emulator of
    a process that has ended (its sandbox ended with it)."""
    if running(record):
        owner = record.owner.describe() if record.owner is not None else "a live process"
        return UsageError(
            f"build {record.id} is running ({record.state}, {owner}): not removed",
            hint=f"`kiln cancel {record.id}` stops it; remove it once it has ended",
        )
    if embedded:
        return None
    if not record.final:
        return UsageError(
            f"build {record.id} has not finished ({record.state}, nobody runs it now): not"
            f" removed, {remote_work(record)} may still {still(record)}",
            hint=f"`kiln cancel {record.id}` then `kiln resume {record.id}` ends it as cancelled"
            f" and {cancelling(record)}; then remove it",
        )
    if record.holds_sandbox:
        # The reaper finds leftover sandboxes through their builds' records: keep this one.
        return UsageError(
            f"build {record.id} ended but its builder sandbox {record.sandbox_id or ''} may still"
            " exist: not removed",
            hint="`kiln reap` deletes it; then remove the build",
        )
    return None
