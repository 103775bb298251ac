"""asyncio helpers shared by kiln's packages."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def finish_despite_cancel(work: Awaitable[T]) -> T:
    """Await ``work`` to its end even when the caller is cancelled meanwhile, then let the cancel
    go on.

    For a write or a call that must not be cut short once begun (a store write whose version the
    writer tracks, a registration that cannot be taken back): cancelling it halfway leaves the
    two sides disagreeing on what happened. Pass a task to look at its outcome after a cancel.
    """
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        # shield marks a failure of the work as retrieved: the cancel is what the caller sees.
        await asyncio.wait({task})
        raise
