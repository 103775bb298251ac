"""Holding a build: renew its lease in the background while a worker runs it."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

from kiln.errors import LeaseLost, StoreUnavailable
from kiln.store._base import Owner, Store

# Renewing at a third of the lease survives two missed heartbeats (a pause, a slow database)
# before another worker may take the build over.
LEASE_S = 30.0
RENEW_EVERY_S = 10.0


class LeaseKeeper:
    """Renews ``owner``'s lease on a build every ``every_s`` seconds, inside ``async with``.

    The build must already be acquired. If the lease is lost (another worker took the build
    over), renewal stops and :meth:`check` raises :class:`LeaseLost`; the driver calls it between
    handlers. A store that is briefly unreachable is retried on the next beat: if it stays away
    past the lease, the new owner's takeover moves the build's version and this worker's next
    save is refused, so correctness never rests on the heartbeat.
    """

    def __init__(
        self,
        store: Store,
        build_id: str,
        owner: Owner,
        *,
        lease_s: float = LEASE_S,
        every_s: float = RENEW_EVERY_S,
    ) -> None:
        self._store = store
        self._build_id = build_id
        self._owner = owner
        self._lease_s = lease_s
        self._every_s = every_s
        self._task: asyncio.Task[None] | None = None
        self.lost: LeaseLost | None = None

    def check(self) -> None:
        """Raise LeaseLost if another worker has taken the build over."""
        if self.lost is not None:
            raise self.lost

    async def __aenter__(self) -> LeaseKeeper:
        self._task = asyncio.create_task(self._beat(), name=f"kiln-lease-{self._build_id}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._every_s)
            try:
                await self._store.renew(self._build_id, self._owner, lease_s=self._lease_s)
            except LeaseLost as error:
                self.lost = error
                return
            except StoreUnavailable:
                continue
