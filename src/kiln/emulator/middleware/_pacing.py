"""Network pacing: a bandwidth model that meters bodies through token buckets.

Latency is a plain sleep in front of the app; bandwidth needs state per exchange, kept here.
"""

from __future__ import annotations

import asyncio
import time

# Megabits, as network links are rated; 1 Mbit/s moves 125 000 bytes per second.
BYTES_PER_SECOND_PER_MBPS = 125_000
# A link buffers a little before it starts pacing; without a burst a 200-byte JSON reply would be
# charged a full token wait of its own and tiny requests would dominate the model.
BURST_BYTES = 16 * 1024


class TokenBucket:
    """Paces bytes to a rate, allowing a small burst; debt is paid by sleeping."""

    def __init__(self, bytes_per_second: float) -> None:
        self._rate = bytes_per_second
        self._tokens = float(BURST_BYTES)
        self._stamp = time.monotonic()

    async def consume(self, size: int) -> None:
        now = time.monotonic()
        self._tokens = min(BURST_BYTES, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        self._tokens -= size
        if self._tokens < 0:
            await asyncio.sleep(-self._tokens / self._rate)


def bucket(bandwidth_mbps: float | None) -> TokenBucket | None:
    """A fresh bucket for a link rated ``bandwidth_mbps``, or None for an unpaced link."""
    if bandwidth_mbps is None:
        return None
    return TokenBucket(bandwidth_mbps * BYTES_PER_SECOND_PER_MBPS)
