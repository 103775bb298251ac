"""What only the PostgreSQL store has to get right: migrations under concurrency, many workers
racing, and surviving a dropped connection."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from kiln.errors import ConfigError
from kiln.store import Owner, PostgresStore, StoreUnavailable
from kiln.store._migrations import LATEST_VERSION, MIGRATIONS

pytestmark = pytest.mark.postgres

LEASE_S = 30.0


def _query(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql).fetchall()


async def test_workers_starting_together_migrate_once(postgres_store_url: str) -> None:
    stores = [PostgresStore(postgres_store_url) for _ in range(4)]
    await asyncio.gather(*(store.list() for store in stores))
    await asyncio.gather(*(store.close() for store in stores))
    again = PostgresStore(postgres_store_url)
    await again.list()
    await again.close()
    applied = _query(postgres_store_url, "SELECT version FROM schema_migrations ORDER BY version")
    assert applied == [(m.version,) for m in MIGRATIONS]


async def test_a_database_from_a_newer_kiln_is_refused(postgres_store_url: str) -> None:
    store = PostgresStore(postgres_store_url)
    await store.list()
    await store.close()
    _query(
        postgres_store_url,
        f"INSERT INTO schema_migrations VALUES ({LATEST_VERSION + 1}, 'future', 0) RETURNING 1",
    )
    later = PostgresStore(postgres_store_url)
    with pytest.raises(ConfigError, match="newer than this kiln"):
        await later.list()
    await later.close()


async def test_many_workers_claim_each_build_exactly_once(postgres_store_url: str) -> None:
    workers = [PostgresStore(postgres_store_url) for _ in range(6)]
    for n in range(30):
        await workers[0].create(id=f"b-{n:02}", name="n", state="prepare", data={})
    # Connect everyone first, so that no worker drains the queue while the others still connect.
    await asyncio.gather(*(store.list(limit=1) for store in workers))

    async def drain(index: int, store: PostgresStore) -> list[str]:
        owner = Owner(host=f"machine-{index}", pid=1000 + index, worker_id=f"w{index}")
        taken = []
        while (record := await store.claim_next(owner, lease_s=LEASE_S)) is not None:
            taken.append(record.id)
        return taken

    results = await asyncio.gather(*(drain(i, s) for i, s in enumerate(workers)))
    await asyncio.gather(*(store.close() for store in workers))
    claimed = [build for taken in results for build in taken]
    assert sorted(claimed) == [f"b-{n:02}" for n in range(30)]
    # Workers ran side by side rather than one draining everything.
    assert sum(1 for taken in results if taken) > 1


async def test_a_dropped_connection_is_reported_then_replaced(postgres_store_url: str) -> None:
    store = PostgresStore(postgres_store_url)
    await store.create(id="b-1", name="n", state="prepare", data={})
    _query(
        postgres_store_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    with pytest.raises(StoreUnavailable):
        await store.get("b-1")
    assert (await store.get("b-1")) is not None
    await store.close()


async def test_a_lease_renewal_never_waits_behind_log_writes(postgres_store_url: str) -> None:
    store = PostgresStore(postgres_store_url, pool_size=2)
    owner = Owner(host="w.example", pid=1, worker_id="w")
    try:
        for id in ("logging", "other"):
            await store.create(id=id, name="n", state="run_builder", data={})
            await store.acquire(id, owner, lease_s=LEASE_S)
        async with await psycopg.AsyncConnection.connect(postgres_store_url) as holder:
            # A log write stuck on a row lock holds a connection; a second one queues behind it.
            await holder.execute("SELECT 1 FROM builds WHERE id = 'logging' FOR UPDATE")
            stuck = [
                asyncio.create_task(store.append_events("logging", [("log", {"n": n})]))
                for n in range(2)
            ]
            await _until_a_backend_waits_on_a_lock(postgres_store_url)
            async with asyncio.timeout(10):
                assert await store.renew("other", owner, lease_s=LEASE_S) is False
            assert not any(task.done() for task in stuck)
            await holder.rollback()
        await asyncio.gather(*stuck)
        assert len(await store.events("logging")) == 2
    finally:
        await store.close()


async def _until_a_backend_waits_on_a_lock(url: str) -> None:
    async with asyncio.timeout(10):
        while not _query(url, "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"):
            await asyncio.sleep(0.01)
