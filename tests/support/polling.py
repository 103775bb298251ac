"""Waiting for something to happen: poll with a deadline, never sleep on a guess."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# Short enough that a test does not wait noticeably longer than what it waits for.
POLL_S = 0.02
# Generous: a loaded CI machine is slow, and a wait that times out fails the test anyway.
ASYNC_TIMEOUT_S = 20.0
BLOCKING_TIMEOUT_S = 60.0


async def wait_until(predicate: Callable[[], Any], *, timeout_s: float = ASYNC_TIMEOUT_S) -> Any:
    """Poll a plain or async predicate on the loop until it returns something truthy; that."""
    async with asyncio.timeout(timeout_s):
        while True:
            value = predicate()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            await asyncio.sleep(POLL_S)


def wait_until_blocking(
    predicate: Callable[[], T | None], *, timeout_s: float = BLOCKING_TIMEOUT_S
) -> T:
    """Poll ``predicate`` from a thread with no loop (a test driving a subprocess) until it
    returns something truthy; that, or an AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(POLL_S)
