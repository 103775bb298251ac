"""A cancel recorded in the store by another process reaches the running build within a second."""

from __future__ import annotations

import time

import pytest

from kiln.durable import POLL_S, Session
from kiln.errors import BuildCancelled
from kiln.store import Store, open_store
from kiln.testing import EmulatorClient
from support.durable import start
from support.polling import wait_until

# The running build polls the store every POLL_S; the rest is one store read and the handler's
# cancellation, with headroom for a loaded CI machine.
NOTICED_WITHIN_S = POLL_S + 1.5


async def test_a_cancel_from_another_store_handle_is_noticed_within_a_second(
    store_url: str, store: Store, emulator: EmulatorClient
) -> None:
    emulator.set_builder(duration_ms=60_000)
    build = start(store, emulator.url, Session(store))
    await wait_until(lambda: build.state.builder_pid is not None)
    elsewhere = open_store(store_url)
    try:
        assert await elsewhere.request_cancel(build.state.id)
        asked = time.monotonic()
        await wait_until(lambda: build.state.state != "run_builder")
        noticed = time.monotonic() - asked
    finally:
        await elsewhere.close()

    assert noticed < NOTICED_WITHIN_S
    with pytest.raises(BuildCancelled):
        await build.result()
    record = await store.get(build.state.id)
    assert record is not None and record.state == "cancelled" and record.final
    assert emulator.live_sandboxes() == []
    assert not await store.request_cancel(build.state.id), "a finished build stays as it ended"
