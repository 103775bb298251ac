"""Benchmark 4: what persisting a build costs, per transition and end to end.

Each build runs with ``store=`` one of memory://, SQLite (a file, WAL) and PostgreSQL (a private
cluster on a Unix socket); builds rotate between the stores, round after round, in one event
loop. The per-transition overhead is the time the driver waits in the session's persist hook
(one store commit: the state and the queued events written, a cancel request read back) before
the next handler runs. A what-if row runs SQLite with ``synchronous = FULL`` (an fsync at every
commit) to show what the stricter durability would cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _common import (
    HELLO,
    TOKEN,
    emulator,
    median,
    parse_args,
    percentile,
    print_table,
    write_results,
)

ROUNDS = 15
TINY_ROUNDS = 1
P50 = 0.5
P99 = 0.99
TARGET_SQLITE_P99_MS = 2.0
WHAT_IF = "sqlite, synchronous=FULL (what-if)"
FSYNC_PROBES = 200
# A transition's persist (and a handler's checkpoint) is one commit_transition; append_events is
# the flush of the last transition's event once the build has finished.
STORE_OPERATIONS = ("commit_transition", "append_events")
FSYNC_PROBE_BYTES = 4096
MS = 1000.0


_PARTS: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar(
    "persist_parts", default=None
)


@contextlib.contextmanager
def timed_persist(samples: list[dict[str, float]]) -> Iterator[None]:
    """Record every Session.persist call made inside the block: its total time, and the time in
    its write (state, events and cancel flag in one commit). The rest is waiting: for the
    session's lock (held by a mid-phase checkpoint) or for the event loop."""
    from kiln.durable import Session

    originals = {name: getattr(Session, name) for name in ("persist", "_write")}

    async def persist(self: Session, state: Any) -> None:
        parts = {"write": 0.0}
        token = _PARTS.set(parts)
        started = time.perf_counter()
        try:
            await originals["persist"](self, state)
        finally:
            _PARTS.reset(token)
            samples.append({"total": time.perf_counter() - started, **parts})

    def part(name: str, key: str) -> Any:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await originals[name](*args, **kwargs)
            finally:
                # Only inside a persist call: the ticker's checkpoints run in their own task.
                parts = _PARTS.get()
                if parts is not None:
                    parts[key] += time.perf_counter() - started

        return timed

    Session.persist = persist  # type: ignore[method-assign]
    Session._write = part("_write", "write")  # type: ignore[method-assign]
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(Session, name, original)


@contextlib.contextmanager
def synchronous_full() -> Iterator[None]:
    """SQLite connections opened inside the block fsync at each commit (WAL, FULL): a what-if
    row, to show what surviving a power cut with no transition lost would cost."""
    from kiln.store import _sqlite

    original = _sqlite._open

    def strict(path: Path) -> sqlite3.Connection:
        conn = original(path)
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    _sqlite._open = strict
    try:
        yield
    finally:
        _sqlite._open = original


def fsync_latency_ms(folder: Path) -> list[float]:
    """The disk's own fsync latency, where the SQLite file lives: what bounds a durable commit."""
    path = folder / "fsync-probe"
    samples = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(FSYNC_PROBES):
            os.write(fd, b"x" * FSYNC_PROBE_BYTES)
            started = time.perf_counter()
            os.fsync(fd)
            samples.append((time.perf_counter() - started) * MS)
    finally:
        os.close(fd)
        path.unlink()
    return samples


def instrument(store: Any, samples: dict[str, list[float]]) -> None:
    """Time the store operations a transition makes (the breakdown of the persist time)."""
    for operation in STORE_OPERATIONS:
        original = getattr(store, operation)

        async def timed(
            *args: Any, _original: Any = original, _op: str = operation, **kwargs: Any
        ) -> Any:
            started = time.perf_counter()
            try:
                return await _original(*args, **kwargs)
            finally:
                samples[_op].append((time.perf_counter() - started) * MS)

        setattr(store, operation, timed)


async def _one_build(url: str, store: Any) -> float:
    import kiln

    started = time.perf_counter()
    await kiln.build_image(str(HELLO), api_url=url, api_key=TOKEN, store=store)
    return time.perf_counter() - started


async def _run(url: str, stores: dict[str, Any], rounds: int) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {
        name: {"build_s": [], "persist_s": [], "ops": {op: [] for op in STORE_OPERATIONS}}
        for name in stores
    }
    # Warm-up: imports, connections, migrations and the first file creation are not timed. The
    # what-if store opens its connection here, under the patch that makes it fsync every commit.
    for name, store in stores.items():
        with synchronous_full() if name == WHAT_IF else contextlib.nullcontext():
            await _one_build(url, store)
    for name, store in stores.items():
        instrument(store, results[name]["ops"])
    for _round in range(rounds):
        for name, store in stores.items():
            samples: list[dict[str, float]] = []
            with timed_persist(samples):
                results[name]["build_s"].append(await _one_build(url, store))
            results[name]["persist_s"].extend(samples)
    for store in stores.values():
        await store.close()
    return results


def _summary(name: str, data: dict[str, Any], memory_build_s: float) -> dict[str, Any]:
    persist_ms = [s["total"] * MS for s in data["persist_s"]]
    parts = {
        "write": [s["write"] * MS for s in data["persist_s"]],
        "waiting": [(s["total"] - s["write"]) * MS for s in data["persist_s"]],
    }
    build_s = median(data["build_s"])
    return {
        "store": name,
        "transitions": len(persist_ms),
        "persist_p50_ms": percentile(persist_ms, P50),
        "persist_p99_ms": percentile(persist_ms, P99),
        "persist_max_ms": max(persist_ms),
        "build_median_s": build_s,
        "vs_memory_ms": (build_s - memory_build_s) * MS,
        "persist_parts": {
            part: {"p50_ms": percentile(times, P50), "p99_ms": percentile(times, P99)}
            for part, times in parts.items()
        },
        "operations": {
            op: {
                "p50_ms": percentile(times, P50),
                "p99_ms": percentile(times, P99),
                "per_build": len(times) / len(data["build_s"]),
            }
            for op, times in data["ops"].items()
        },
    }


def measure(rounds: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
    from kiln.store import MemoryStore, PostgresStore, SQLiteStore
    from kiln.testing.postgres import PostgresCluster

    with (
        tempfile.TemporaryDirectory(prefix="kiln-bench-store-") as tmp,
        PostgresCluster() as cluster,
        emulator() as emu,
    ):
        factories: dict[str, Callable[[], Any]] = {
            "memory": MemoryStore,
            "sqlite": lambda: SQLiteStore(Path(tmp) / "builds.db"),
            WHAT_IF: lambda: SQLiteStore(Path(tmp) / "strict.db"),
            "postgresql": lambda: PostgresStore(cluster.create_database("bench")),
        }
        stores = {name: make() for name, make in factories.items()}
        results = asyncio.run(_run(emu.url, stores, rounds))
        fsync_ms = fsync_latency_ms(Path(tmp))
    memory_s = median(results["memory"]["build_s"])
    rows = [_summary(name, data, memory_s) for name, data in results.items()]
    return rows, {
        "fsync_p50_ms": percentile(fsync_ms, P50),
        "fsync_p99_ms": percentile(fsync_ms, P99),
    }


def main() -> None:
    args = parse_args(__doc__ or "")
    rows, disk = measure(TINY_ROUNDS if args.tiny else ROUNDS)
    text = print_table(
        ["store", "transitions", "p50 ms", "p99 ms", "max ms", "build s", "vs memory ms"],
        [
            (
                r["store"],
                r["transitions"],
                r["persist_p50_ms"],
                r["persist_p99_ms"],
                r["persist_max_ms"],
                r["build_median_s"],
                r["vs_memory_ms"],
            )
            for r in rows
        ],
    )
    ops = print_table(
        ["store", "operation", "per build", "p50 ms", "p99 ms"],
        [
            (r["store"], op, o["per_build"], o["p50_ms"], o["p99_ms"])
            for r in rows
            if r["store"] != "memory"
            for op, o in r["operations"].items()
        ],
    )
    parts = print_table(
        ["store", "part of persist", "p50 ms", "p99 ms"],
        [
            (r["store"], part, v["p50_ms"], v["p99_ms"])
            for r in rows
            for part, v in r["persist_parts"].items()
        ],
    )
    sqlite = next(r for r in rows if r["store"] == "sqlite")
    met = sqlite["persist_p99_ms"] <= TARGET_SQLITE_P99_MS
    print(
        f"SQLite p99 per transition {sqlite['persist_p99_ms']:.2f} ms "
        f"(target <= {TARGET_SQLITE_P99_MS}): {'met' if met else 'MISSED'}"
    )
    print(f"the disk's fsync: p50 {disk['fsync_p50_ms']:.2f} ms, p99 {disk['fsync_p99_ms']:.2f} ms")
    write_results(
        "persistence",
        {
            "tiny": args.tiny,
            "rows": rows,
            "disk": disk,
            "table": text
            + "\n\nWhere a transition's persist time goes:\n\n"
            + parts
            + "\n\nThe store operations inside it:\n\n"
            + ops,
            "target": {"sqlite_p99_ms": TARGET_SQLITE_P99_MS, "met": met},
        },
    )


if __name__ == "__main__":
    main()
