"""Emulator level, cancellation: a build cancelled at a generated point (through the library's
``Build.cancel()``, from its own event callback) ends ``cancelled`` if the cancel came before
cleanup and before the platform registered its image, else ``done``; it registers a template
exactly when it ends ``done``, and leaves no sandbox, at most one builder and at most one served
complete behind."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

import kiln
from kiln.machine import Event, StatusEvent
from kiln.testing import TEST_TOKEN, EmulatorClient
from properties.levels import examples
from support.emulator import builder_starts, completes_served
from support.paths import HELLO

pytestmark = pytest.mark.slow

# A fault-free build emits about forty events; cancel points reach a little past the end.
MAX_CANCEL_POINT = 48
REGISTERED_PREFIX = "Image '"
LATE_STATES = ("cleanup", "done", "failed", "cancelled")
# Whether to cancel at this event, given how many events the build has emitted (this included).
CancelPoint = Callable[[int, Event], bool]


def registered(event: Event) -> bool:
    """complete's status once the platform registered the template, before the handler returns."""
    return isinstance(event, StatusEvent) and event.message.startswith(REGISTERED_PREFIX)


async def cancelled_build(
    emulator: EmulatorClient, point: CancelPoint
) -> tuple[str, str | None, bool]:
    """Run a build, cancelling it at ``point``: its outcome, the state it was cancelled in, and
    whether the platform had registered the image by then."""
    handle: list[kiln.Build] = []
    seen = 0
    cancelled_in: str | None = None
    registered_first = False

    def on_event(event: Event) -> None:
        nonlocal seen, cancelled_in, registered_first
        seen += 1
        registered_first = registered_first or (cancelled_in is None and registered(event))
        # The first event is delivered before start_build returns the handle.
        if handle and cancelled_in is None and point(seen, event):
            cancelled_in = handle[0].state.state
            handle[0].cancel()

    build = kiln.start_build(HELLO, api_url=emulator.url, api_key=TEST_TOKEN, on_event=on_event)
    handle.append(build)
    with contextlib.suppress(kiln.KilnError):
        await build.result()
    assert build.state.outcome is not None
    return build.state.outcome, cancelled_in, registered_first


def check_cancelled(
    emulator: EmulatorClient, outcome: str, cancelled_in: str | None, registered_first: bool
) -> None:
    # Too late to cancel: the build was already cleaning up, or its image was registered.
    late = cancelled_in is None or cancelled_in in LATE_STATES or registered_first
    assert outcome == ("done" if late else "cancelled"), cancelled_in
    assert bool(emulator.templates()) == (outcome == "done")
    assert emulator.live_sandboxes() == []
    assert builder_starts(emulator) <= 1
    assert completes_served(emulator.requests()) <= 1


@settings(
    max_examples=examples("cancel"),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(index=st.integers(2, MAX_CANCEL_POINT))
@example(index=2)
def test_a_cancelled_build_ends_cancelled_and_registers_nothing(
    kiln_emulator: EmulatorClient, index: int
) -> None:
    kiln_emulator.reset()
    point: CancelPoint = lambda seen, _event: seen >= index  # noqa: E731
    outcome, cancelled_in, registered_first = asyncio.run(cancelled_build(kiln_emulator, point))
    event(f"cancelled in {cancelled_in}")
    check_cancelled(kiln_emulator, outcome, cancelled_in, registered_first)


async def test_a_cancel_after_registration_ends_done(kiln_emulator: EmulatorClient) -> None:
    outcome, cancelled_in, registered_first = await cancelled_build(
        kiln_emulator, lambda _seen, event: registered(event)
    )
    assert (cancelled_in, registered_first, outcome) == ("complete", True, "done")
    check_cancelled(kiln_emulator, outcome, cancelled_in, registered_first)
