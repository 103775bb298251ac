"""Benchmark 3: N concurrent builds in one kiln process against one emulator.

The emulator's builder takes 2 s per build and streams its log meanwhile (a line every 40 ms), as
a real build's remote work would; what the benchmark shows is how much one kiln process adds on
top when it drives many builds at once. Each N runs in a fresh child process (so its peak RSS is
its own) against a fresh emulator. Inside the child, a probe task sleeps 10 ms again and again
and records how late it wakes: the event loop's lag while the builds run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    HELLO,
    PYTHON,
    TOKEN,
    cpu_seconds,
    emulator,
    percentile,
    print_table,
    set_builder,
    write_results,
)

SIZES = (1, 10, 100, 300, 1000)
TINY_SIZES = (1, 3)
BUILDER_MS = 2000
TINY_BUILDER_MS = 100
BUILDER_LINE_PACE_MS = 40
CHILD_TIMEOUT_S = 1800
# The targets (issue 14): at N = 300 the wall time and the loop's lag; at the largest N,
# every build done within the memory bound.
WALL_TARGET_N = 300
TARGET_WALL_FACTOR = 3.0
TARGET_LAG_P99_MS = 50.0
TARGET_RSS_MB = 1024
KIB_PER_MB = 1024
LAG_PROBE_S = 0.01
MS = 1000.0
P99 = 0.99


async def _probe_lag(lags: list[float]) -> None:
    """Sleep LAG_PROBE_S again and again; record how much later than asked each wake-up is."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time()
        await asyncio.sleep(LAG_PROBE_S)
        lags.append(loop.time() - asked - LAG_PROBE_S)


async def _build_all(url: str, count: int, lags: list[float]) -> list[BaseException | None]:
    import kiln

    probe = asyncio.create_task(_probe_lag(lags))
    builds = [
        kiln.start_build(str(HELLO), name=f"many-{i}", api_url=url, api_key=TOKEN)
        for i in range(count)
    ]
    outcomes = await asyncio.gather(*(b.result() for b in builds), return_exceptions=True)
    probe.cancel()
    return [o if isinstance(o, BaseException) else None for o in outcomes]


def child(url: str, count: int) -> None:
    """Runs in the child process: N builds at once; prints one JSON line."""
    import kiln  # noqa: F401  (imported before the baseline is taken)

    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu_before = cpu_seconds()
    started = time.perf_counter()
    lags: list[float] = []
    errors = asyncio.run(_build_all(url, count, lags))
    wall = time.perf_counter() - started
    failures = [repr(e) for e in errors if e is not None]
    print(
        json.dumps(
            {
                "n": count,
                "wall_s": wall,
                "cpu_s": cpu_seconds() - cpu_before,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_MB,
                "baseline_rss_mb": baseline_kib / KIB_PER_MB,
                "lag_p50_ms": percentile(lags, 0.5) * MS,
                "lag_p99_ms": percentile(lags, P99) * MS,
                "lag_max_ms": max(lags, default=0.0) * MS,
                "failures": len(failures),
                "first_failures": failures[:3],
            }
        )
    )


def measure(count: int, builder_ms: int) -> dict[str, Any]:
    with emulator(builder_duration_ms=builder_ms) as emu:
        lines = builder_ms // BUILDER_LINE_PACE_MS
        set_builder(emu.url, log_lines=lines, line_pace_ms=BUILDER_LINE_PACE_MS)
        emulator_cpu_before = emu.cpu_s()
        output = subprocess.run(
            [PYTHON, str(Path(__file__).resolve()), "--child", str(count), "--url", emu.url],
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT_S,
            check=True,
        ).stdout
        result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
        result["emulator_cpu_s"] = emu.cpu_s() - emulator_cpu_before
    result["cpu_per_build_ms"] = 1000 * result["cpu_s"] / count
    print(f"N={count}: {result['wall_s']:.2f} s", file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="smallest sizes; times nothing")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.url, args.child)
        return
    sizes = TINY_SIZES if args.tiny else SIZES
    builder_ms = TINY_BUILDER_MS if args.tiny else BUILDER_MS
    rows = [measure(n, builder_ms) for n in sizes]
    one, top = rows[0]["wall_s"], rows[-1]
    wall_row = next((r for r in rows if r["n"] == WALL_TARGET_N), top)
    factor = wall_row["wall_s"] / one
    met = (
        factor <= TARGET_WALL_FACTOR
        and wall_row["lag_p99_ms"] <= TARGET_LAG_P99_MS
        and top["peak_rss_mb"] < TARGET_RSS_MB
        and all(r["failures"] == 0 for r in rows)
    )
    text = print_table(
        [
            "N",
            "wall s",
            "x one build",
            "peak RSS MB",
            "CPU ms/build",
            "loop lag p50 ms",
            "loop lag p99 ms",
            "emulator CPU s",
            "failed",
        ],
        [
            (
                r["n"],
                r["wall_s"],
                r["wall_s"] / one,
                r["peak_rss_mb"],
                r["cpu_per_build_ms"],
                r["lag_p50_ms"],
                r["lag_p99_ms"],
                r["emulator_cpu_s"],
                r["failures"],
            )
            for r in rows
        ],
    )
    print(
        f"N={wall_row['n']}: {factor:.2f}x one build (target <= {TARGET_WALL_FACTOR}), loop lag"
        f" p99 {wall_row['lag_p99_ms']:.0f} ms (target <= {TARGET_LAG_P99_MS:.0f});"
        f" N={top['n']}: {top['peak_rss_mb']:.0f} MB (target < {TARGET_RSS_MB}),"
        f" {top['failures']} failed: {'met' if met else 'MISSED'}"
    )
    write_results(
        "many",
        {
            "tiny": args.tiny,
            "builder_ms": builder_ms,
            "rows": rows,
            "table": text,
            "target": {
                "wall_factor": TARGET_WALL_FACTOR,
                "lag_p99_ms": TARGET_LAG_P99_MS,
                "rss_mb": TARGET_RSS_MB,
                "met": met,
            },
        },
    )


if __name__ == "__main__":
    main()
