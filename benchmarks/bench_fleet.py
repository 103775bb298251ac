"""Benchmark 6: a fleet of `kiln worker`s on one PostgreSQL, optionally under chaos.

N worker processes x concurrency C share a store (a private PostgreSQL cluster with
pg_stat_statements) and one emulator (its own process; the builder streams log lines for a few
seconds). B builds are submitted at once. With ``--kill-every S`` a random worker is SIGKILLed
every S seconds and a fresh one started in its place. Reported:

- builds per minute, and whether every build ended done, with one builder run each;
- queue latency (submitted -> first claimed) and orphan recovery (a kill -> each build the
  killed worker held is claimed again);
- store statements (pg_stat_statements, BEGIN and COMMIT included) and transactions
  (pg_stat_database) per build and per second of a running build;
- an idle worker's transactions per second, and a claim's time at 100,000 finished builds;
- sandboxes left running at the end that the store does not know and no build reported.

All workers run on this one machine (same host: a dead worker's builds are recognised at once).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from _common import (
    HELLO,
    PYTHON,
    ROOT,
    TOKEN,
    emulator,
    emulator_control,
    percentile,
    print_table,
    set_builder,
    write_results,
)

BUILDER = {"duration_ms": 3000, "log_lines": 30, "line_pace_ms": 100}
TINY_BUILDER = {"duration_ms": 300, "log_lines": 3, "line_pace_ms": 100}
HISTORY = 100_000
TINY_HISTORY = 2_000
CLAIMS_TIMED = 50
IDLE_S = 30.0
TINY_IDLE_S = 5.0
WAIT_LIMIT_S = 900.0
POLL_S = 0.2
STOP_TIMEOUT_S = 60.0
BUILDER_NAME = "tl-rootfs-build"
PG_SETTINGS = ("shared_preload_libraries=pg_stat_statements", "max_connections=200")
# The targets.
TARGETS = {
    "tx_per_build_s": 1.0,
    "statements_per_build_s": 5.0,
    "idle_tx_per_s": 0.2,
    "claim_ms": 2.0,
}


def _worker_command(store_url: str, concurrency: int, name: str) -> list[str]:
    return [
        PYTHON,
        "-m",
        "kiln",
        "worker",
        "--store",
        store_url,
        "--concurrency",
        str(concurrency),
        "--worker-id",
        name,
    ]


class Fleet:
    """The worker processes, killed and replaced on demand."""

    def __init__(self, store_url: str, concurrency: int, logs: Path) -> None:
        self._store_url = store_url
        self._concurrency = concurrency
        self._logs = logs
        self._env = {**os.environ, "TENSORLAKE_API_KEY": TOKEN}
        self._env.pop("KILN_STORE", None)
        self.live: dict[str, subprocess.Popen[bytes]] = {}
        self._started = 0

    def start(self) -> str:
        name = f"w{self._started}"
        self._started += 1
        with (self._logs / f"{name}.log").open("wb") as sink:
            self.live[name] = subprocess.Popen(
                _worker_command(self._store_url, self._concurrency, name),
                env=self._env,
                cwd=ROOT,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        return name

    def kill(self, name: str) -> None:
        process = self.live.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait()  # reaped: a zombie's pid would still look alive

    def drain(self) -> None:
        for process in self.live.values():
            process.send_signal(signal.SIGTERM)
        for process in self.live.values():
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.live.clear()


async def _counters(url: str) -> tuple[int, int]:
    """(statements, transactions) this database has seen, from PostgreSQL's statistics."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("SELECT pg_stat_force_next_flush()")
        row = await (
            await conn.execute(
                "SELECT (SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s"
                "  JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = current_database()),"
                " (SELECT xact_commit + xact_rollback FROM pg_stat_database"
                "  WHERE datname = current_database())"
            )
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])


async def _top_statements(url: str, count: int = 12) -> list[tuple[int, str]]:
    """The statements run most often (calls, text), for the analysis."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        rows = await (
            await conn.execute(
                "SELECT calls, left(regexp_replace(query, '\\s+', ' ', 'g'), 90)"
                " FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
                " WHERE d.datname = current_database() ORDER BY calls DESC LIMIT %s",
                (count,),
            )
        ).fetchall()
        return [(int(calls), str(query)) for calls, query in rows]


async def _reset_counters(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("SELECT pg_stat_statements_reset()")
        await conn.execute("SELECT pg_stat_reset()")


async def run_fleet(
    emu_url: str, store_url: str, args: argparse.Namespace, logs: Path
) -> dict[str, Any]:
    import kiln
    from kiln.durable import unrecorded
    from kiln.store import open_store

    store = open_store(store_url)
    ids = [
        await kiln.submit(str(HELLO), store=store, name=f"fleet-{n}", api_url=emu_url)
        for n in range(args.builds)
    ]
    await _reset_counters(store_url)
    statements_0, transactions_0 = await _counters(store_url)
    fleet = Fleet(store_url, args.concurrency, logs)
    started = time.time()
    for _ in range(args.workers):
        fleet.start()
    kills: list[tuple[float, str, list[str]]] = []
    next_kill = started + args.kill_every if args.kill_every else None
    try:
        while True:
            records = [await store.get(build_id) for build_id in ids]
            if all(r is not None and r.final for r in records):
                break
            if time.time() - started > WAIT_LIMIT_S:
                raise TimeoutError("the fleet did not finish its builds in time")
            if next_kill is not None and time.time() >= next_kill:
                victim = random.choice(sorted(fleet.live))
                held = [
                    r.id
                    for r in records
                    if r is not None and not r.final and r.owner and r.owner.worker_id == victim
                ]
                kills.append((time.time(), victim, held))
                fleet.kill(victim)
                fleet.start()
                next_kill += args.kill_every
            await asyncio.sleep(POLL_S)
        finished = time.time()
    finally:
        fleet.drain()
    statements_1, transactions_1 = await _counters(store_url)
    top = await _top_statements(store_url)
    records = [await store.get(build_id) for build_id in ids]
    events = {build_id: await store.events(build_id) for build_id in ids}
    reported = await unrecorded(store)
    await store.close()
    return _summarise(
        args,
        emu_url,
        ids,
        records,
        events,
        kills,
        reported,
        started=started,
        finished=finished,
        statements=statements_1 - statements_0,
        transactions=transactions_1 - transactions_0,
    ) | {"top_statements": top}


def _summarise(
    args: argparse.Namespace,
    emu_url: str,
    ids: list[str],
    records: list[Any],
    events: dict[str, list[Any]],
    kills: list[tuple[float, str, list[str]]],
    reported: list[Any],
    *,
    started: float,
    finished: float,
    statements: int,
    transactions: int,
) -> dict[str, Any]:
    claims = {i: [e.time for e in events[i] if e.kind == "resumed"] for i in ids}
    queue = [claims[r.id][0] - r.created_at for r in records if claims[r.id]]
    recovery = [
        min(t for t in claims[build_id] if t > killed_at) - killed_at
        for killed_at, _victim, held in kills
        for build_id in held
        if any(t > killed_at for t in claims[build_id])
    ]
    running_s = sum(r.updated_at - claims[r.id][0] for r in records if claims[r.id])
    processes = emulator_control(emu_url, "GET", "/_emulator/processes")["processes"]
    builders = [p for p in processes if p["command"].endswith(BUILDER_NAME)]
    sandboxes = emulator_control(emu_url, "GET", "/_emulator/sandboxes")["sandboxes"]
    known = {r.sandbox_id for r in records if r.sandbox_id}
    live = [s for s in sandboxes if s.get("status") != "terminated"]
    unknown_live = [s for s in live if s["sandbox_id"] not in known]
    wall = finished - started
    return {
        "workers": args.workers,
        "concurrency": args.concurrency,
        "builds": len(ids),
        "kill_every_s": args.kill_every,
        "kills": len(kills),
        "done": sum(1 for r in records if r.state == "done"),
        "builder_runs": len(builders),
        "wall_s": wall,
        "builds_per_minute": len(ids) / wall * 60,
        "queue_p50_s": statistics.median(queue),
        "queue_max_s": max(queue),
        "orphans": len(recovery),
        "recovery_p50_s": statistics.median(recovery) if recovery else None,
        "recovery_max_s": max(recovery) if recovery else None,
        "statements_per_build": statements / len(ids),
        "transactions_per_build": transactions / len(ids),
        "statements_per_build_s": statements / running_s,
        "tx_per_build_s": transactions / running_s,
        "sandboxes_created": len(sandboxes),
        "live_at_end": len(live),
        "unknown_live_at_end": len(unknown_live),
        "reported_unrecorded": len(reported),
        "unreported_leaks": max(0, len(unknown_live) - len(reported)),
    }


async def idle_load(store_url: str, seconds: float, logs: Path) -> float:
    """Transactions per second of one worker with nothing to do (after its start-up)."""
    fleet = Fleet(store_url, 1, logs)
    fleet.start()
    try:
        await asyncio.sleep(min(10.0, seconds))  # start-up and first claims, not measured
        _, before = await _counters(store_url)
        await asyncio.sleep(seconds)
        _, after = await _counters(store_url)
    finally:
        fleet.drain()
    # Our own two counter reads are transactions too.
    return max(0, after - before - 1) / seconds


async def claim_at_history(store_url: str, history: int) -> dict[str, float]:
    """A claim's time with ``history`` finished builds in the table (and a few queued)."""
    from kiln.store import Owner, open_store

    store = open_store(store_url)
    await store.list(limit=1)  # creates the tables
    async with await psycopg.AsyncConnection.connect(store_url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO builds (id, name, state, version, schema_version, data, created_at,"
            " updated_at, final) SELECT 'old-' || n, 'old', 'done', 3, 1, '{}'::jsonb,"
            " extract(epoch from now()) - 86400 + n, extract(epoch from now()) - 86400 + n, TRUE"
            " FROM generate_series(1, %s) AS n",
            (history,),
        )
        await conn.execute("ANALYZE builds")
    for n in range(CLAIMS_TIMED):
        await store.create(id=f"queued-{n}", name="q", state="resolve_scope", data={})
    owner = Owner.current("bench-claimer")
    times = []
    for _ in range(CLAIMS_TIMED):
        begun = time.perf_counter()
        claimed = await store.claim_next(owner, lease_s=30)
        times.append((time.perf_counter() - begun) * 1000)
        assert claimed is not None
    await store.close()
    return {"claim_p50_ms": statistics.median(times), "claim_p99_ms": percentile(times, 0.99)}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from kiln.testing.postgres import PostgresCluster

    logs = Path(tempfile.mkdtemp(prefix="kiln-bench-fleet-"))
    builder = TINY_BUILDER if args.tiny else BUILDER
    with PostgresCluster(settings=PG_SETTINGS) as cluster, emulator() as emu:
        set_builder(emu.url, **builder)
        run_url = cluster.create_database("fleet_run")
        with psycopg.connect(run_url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
        result = asyncio.run(run_fleet(emu.url, run_url, args, logs))
        idle_url = cluster.create_database("fleet_idle")
        with psycopg.connect(idle_url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
        result["idle_tx_per_s"] = asyncio.run(
            idle_load(idle_url, TINY_IDLE_S if args.tiny else IDLE_S, logs)
        )
        history = TINY_HISTORY if args.tiny else HISTORY
        result["history"] = history
        result.update(
            asyncio.run(claim_at_history(cluster.create_database("fleet_history"), history))
        )
    result["builder"] = builder
    result["worker_logs"] = str(logs)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="smallest sizes; times nothing")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--builds", type=int, default=200)
    parser.add_argument(
        "--kill-every", type=float, default=5.0, help="SIGKILL a worker every S seconds (0: never)"
    )
    args = parser.parse_args()
    if args.tiny:
        args.workers, args.concurrency, args.builds = 2, 2, 6
        args.kill_every = args.kill_every and 2.0
    r = measure(args)
    text = print_table(
        ["measure", "value", "target"],
        [
            ("workers x concurrency", f"{r['workers']} x {r['concurrency']}", ""),
            ("builds, kills (every s)", f"{r['builds']}, {r['kills']} ({r['kill_every_s']})", ""),
            ("ended done / builder runs", f"{r['done']} / {r['builder_runs']}", "all, one each"),
            ("builds per minute", f"{r['builds_per_minute']:.0f}", ""),
            ("queue latency p50 / max s", f"{r['queue_p50_s']:.1f} / {r['queue_max_s']:.1f}", ""),
            (
                "orphan recovery p50 / max s",
                f"{_opt(r['recovery_p50_s'])} / {_opt(r['recovery_max_s'])} ({r['orphans']})",
                "",
            ),
            ("statements per build", f"{r['statements_per_build']:.0f}", ""),
            ("transactions per build", f"{r['transactions_per_build']:.0f}", ""),
            (
                "statements per running build-second",
                f"{r['statements_per_build_s']:.2f}",
                f"<= {TARGETS['statements_per_build_s']}",
            ),
            (
                "transactions per running build-second",
                f"{r['tx_per_build_s']:.2f}",
                f"<= {TARGETS['tx_per_build_s']}",
            ),
            ("idle worker transactions/s", f"{r['idle_tx_per_s']:.3f}", "<= 0.2"),
            (
                f"claim at {r['history']:,} finished builds p50 / p99 ms",
                f"{r['claim_p50_ms']:.2f} / {r['claim_p99_ms']:.2f}",
                f"<= {TARGETS['claim_ms']}",
            ),
            (
                "sandboxes: created / live at end / unknown / reported / unreported",
                f"{r['sandboxes_created']} / {r['live_at_end']} / {r['unknown_live_at_end']}"
                f" / {r['reported_unrecorded']} / {r['unreported_leaks']}",
                "unreported 0",
            ),
        ],
    )
    met = (
        r["done"] == r["builds"] == r["builder_runs"]
        and r["unreported_leaks"] == 0
        and r["tx_per_build_s"] <= TARGETS["tx_per_build_s"]
        and r["statements_per_build_s"] <= TARGETS["statements_per_build_s"]
        and r["idle_tx_per_s"] <= TARGETS["idle_tx_per_s"]
        and r["claim_p50_ms"] <= TARGETS["claim_ms"]
    )
    print(f"targets: {'met' if met else 'MISSED'}")
    write_results(
        "fleet",
        {
            "tiny": args.tiny,
            "rows": [r],
            "table": text,
            "target": {**TARGETS, "met": met},
        },
    )
    json.dump(r, sys.stderr, indent=2)


def _opt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


if __name__ == "__main__":
    main()
