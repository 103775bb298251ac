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
IDLE_S = 60.0
STEADY_BUILDS = 4
STEADY_S = 20.0
TINY_STEADY_S = 3.0
# Long enough to outlast the measuring window, a log line every 100 ms.
STEADY_BUILDER = {"duration_ms": 60_000, "log_lines": 600, "line_pace_ms": 100}
TINY_STEADY_BUILDER = {"duration_ms": 8_000, "log_lines": 80, "line_pace_ms": 100}
_IN_BUILDER = (
    "SELECT count(*) FROM builds WHERE state = 'run_builder' AND data->>'builder_pid' IS NOT NULL"
)
TINY_IDLE_S = 3.0
WAIT_LIMIT_S = 900.0
POLL_S = 0.5
_UNFINISHED = "SELECT count(*) FROM builds WHERE NOT final"
_HELD_BY = "SELECT id FROM builds WHERE NOT final AND owner_worker = %s"
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


# kiln's PostgreSQL statements that run alone, each its own transaction (the store's
# one-statement operations: renewal, reads, turns, pruning); everything else runs between BEGIN
# and COMMIT.
AUTOCOMMIT = (
    "lease_expires_at = $1 WHERE id = $2 AND (owner_host",
    "INSERT INTO turns",
    "WHERE holds_sandbox",
    "SET holds_sandbox = FALSE",
    "DELETE FROM builds WHERE id IN",
    "ORDER BY created_at DESC",
    "FROM events WHERE build_id",
    "left(id,",
)
# The benchmark's own statements, left out of every count.
OWN = ("pg_stat", "count(*)", "owner_worker = $1", "CREATE EXTENSION")


async def _counters(url: str) -> tuple[int, int]:
    """(statements, transactions) kiln ran in this database, from pg_stat_statements (updated as
    each statement ends, unlike pg_stat_database): BEGIN and COMMIT count as statements; a
    transaction is a COMMIT, a ROLLBACK or a statement that ran alone."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        rows = await (
            await conn.execute(
                "SELECT query, calls FROM pg_stat_statements s JOIN pg_database d"
                " ON d.oid = s.dbid WHERE d.datname = current_database()"
            )
        ).fetchall()
    statements = transactions = 0
    for query, calls in rows:
        text = " ".join(str(query).split())
        if any(mark in text for mark in OWN):
            continue
        statements += int(calls)
        alone = any(mark in text for mark in AUTOCOMMIT) or (
            text.startswith("SELECT id, name") and "FOR UPDATE" not in text
        )
        if text in ("COMMIT", "ROLLBACK") or alone:
            transactions += int(calls)
    return statements, transactions


def server_cpu_s(data_dir: Path) -> float:
    """CPU seconds the PostgreSQL server has used: the postmaster, its exited children (reaped
    into the postmaster's counters) and its live ones."""
    tick = os.sysconf("SC_CLK_TCK")
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, parent = int(entry.name), int(fields[1])
        if pid == postmaster:
            total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
        elif parent == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / tick


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
    # The benchmark's own look at the store (left out of the counts: see OWN).
    async with await psycopg.AsyncConnection.connect(store_url, autocommit=True) as watch:
        try:
            while True:
                row = await (await watch.execute(_UNFINISHED)).fetchone()
                if row is not None and row[0] == 0:
                    break
                if time.time() - started > WAIT_LIMIT_S:
                    raise TimeoutError("the fleet did not finish its builds in time")
                if next_kill is not None and time.time() >= next_kill:
                    victim = random.choice(sorted(fleet.live))
                    held = [
                        r[0] for r in await (await watch.execute(_HELD_BY, (victim,))).fetchall()
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


async def steady_load(
    emu_url: str, store_url: str, args: argparse.Namespace, logs: Path, data_dir: Path
) -> dict[str, float]:
    """Statements and transactions per second of a build while its builder runs (streaming log
    lines), measured with STEADY_BUILDS builds in run_builder on one worker."""
    import kiln
    from kiln.store import open_store

    set_builder(emu_url, **(TINY_STEADY_BUILDER if args.tiny else STEADY_BUILDER))
    store = open_store(store_url)
    for n in range(STEADY_BUILDS):
        await kiln.submit(str(HELLO), store=store, name=f"steady-{n}", api_url=emu_url)
    await store.close()
    fleet = Fleet(store_url, STEADY_BUILDS, logs)
    fleet.start()
    window = TINY_STEADY_S if args.tiny else STEADY_S
    try:
        async with await psycopg.AsyncConnection.connect(store_url, autocommit=True) as watch:
            deadline = time.monotonic() + WAIT_LIMIT_S
            while True:
                row = await (await watch.execute(_IN_BUILDER)).fetchone()
                if row is not None and row[0] == STEADY_BUILDS:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError("the steady builds never all reached their builder")
                await asyncio.sleep(POLL_S)
        statements_0, transactions_0 = await _counters(store_url)
        cpu_0 = server_cpu_s(data_dir)
        await asyncio.sleep(window)
        cpu_1 = server_cpu_s(data_dir)
        statements_1, transactions_1 = await _counters(store_url)
    finally:
        fleet.drain()
    build_seconds = STEADY_BUILDS * window
    return {
        "steady_statements_per_build_s": (statements_1 - statements_0) / build_seconds,
        "steady_tx_per_build_s": (transactions_1 - transactions_0) / build_seconds,
        "steady_server_cpu_ms_per_build_s": (cpu_1 - cpu_0) * 1000 / build_seconds,
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
    return (after - before) / seconds


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
    async with await psycopg.AsyncConnection.connect(store_url, autocommit=True) as conn:
        # The database's own time for a claim: its statements' mean execution times together.
        row = await (
            await conn.execute(
                "SELECT coalesce(sum(mean_exec_time), 0) FROM pg_stat_statements s"
                " JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = current_database()"
                " AND (query LIKE '%SKIP LOCKED%' OR query LIKE 'UPDATE builds SET owner_host%')"
            )
        ).fetchone()
    return {
        "claim_p50_ms": statistics.median(times),
        "claim_p99_ms": percentile(times, 0.99),
        "claim_server_ms": float(row[0]) if row else 0.0,
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from kiln.testing.postgres import PostgresCluster

    logs = Path(tempfile.mkdtemp(prefix="kiln-bench-fleet-"))
    builder = TINY_BUILDER if args.tiny else BUILDER
    with PostgresCluster(settings=PG_SETTINGS) as cluster, emulator() as emu:
        set_builder(emu.url, **builder)
        run_url = cluster.create_database("fleet_run")
        with psycopg.connect(run_url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
        data_dir = cluster.socket_dir.parent / "data"
        cpu_before = server_cpu_s(data_dir)
        result = asyncio.run(run_fleet(emu.url, run_url, args, logs))
        result["server_cpu_s"] = server_cpu_s(data_dir) - cpu_before
        steady_url = cluster.create_database("fleet_steady")
        with psycopg.connect(steady_url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
        result.update(asyncio.run(steady_load(emu.url, steady_url, args, logs, data_dir)))
        idle_url = cluster.create_database("fleet_idle")
        with psycopg.connect(idle_url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
        result["idle_tx_per_s"] = asyncio.run(
            idle_load(idle_url, TINY_IDLE_S if args.tiny else IDLE_S, logs)
        )
        history = TINY_HISTORY if args.tiny else HISTORY
        result["history"] = history
        history_url = cluster.create_database("fleet_history")
        with psycopg.connect(history_url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
        result.update(asyncio.run(claim_at_history(history_url, history)))
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
        args.workers, args.concurrency, args.builds = 2, 2, 4
        args.kill_every = args.kill_every and 8.0
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
            ("PostgreSQL CPU per build ms", f"{r['server_cpu_s'] / r['builds'] * 1000:.0f}", ""),
            ("statements per build", f"{r['statements_per_build']:.0f}", ""),
            ("transactions per build", f"{r['transactions_per_build']:.0f}", ""),
            (
                "statements / transactions per second of a build, whole build",
                f"{r['statements_per_build_s']:.1f} / {r['tx_per_build_s']:.1f}",
                "",
            ),
            (
                "statements per second of a build while its builder streams logs",
                f"{r['steady_statements_per_build_s']:.2f}",
                f"<= {TARGETS['statements_per_build_s']}",
            ),
            (
                "transactions per second of a build while its builder streams logs",
                f"{r['steady_tx_per_build_s']:.2f}",
                f"<= {TARGETS['tx_per_build_s']}",
            ),
            (
                "PostgreSQL CPU per second of a running build ms",
                f"{r['steady_server_cpu_ms_per_build_s']:.2f}",
                "",
            ),
            ("idle worker transactions/s", f"{r['idle_tx_per_s']:.3f}", "<= 0.2"),
            (
                f"claim at {r['history']:,} finished builds: in the database",
                f"{r['claim_server_ms']:.2f} ms",
                f"<= {TARGETS['claim_ms']}",
            ),
            (
                "same, round trips included, p50 / p99",
                f"{r['claim_p50_ms']:.2f} / {r['claim_p99_ms']:.2f} ms",
                "",
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
        and r["steady_tx_per_build_s"] <= TARGETS["tx_per_build_s"]
        and r["steady_statements_per_build_s"] <= TARGETS["statements_per_build_s"]
        and r["idle_tx_per_s"] <= TARGETS["idle_tx_per_s"]
        and r["claim_server_ms"] <= TARGETS["claim_ms"]
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
