"""Where one kiln process spends its CPU when it drives many builds (the profile behind bench_many).

    .venv/bin/python benchmarks/profile_many.py 100

Runs N concurrent builds (emulator builder at 2 s, as bench_many) under cProfile and prints the
own time of every function summed by package (httpx, httpcore, h11, anyio, asyncio, kiln's
layers...), plus the CPU time of this process and of the emulator per build. Waiting in epoll is
shown apart: it is idle time, not work.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import re
import time
from collections import defaultdict

from _common import cpu_seconds, emulator, print_table, write_results
from bench_many import BUILDER_MS, _build_all

DEFAULT_N = 100
TOP = 14
MS = 1000.0
_SITE = re.compile(r"site-packages/([A-Za-z0-9_]+)")
_KILN = re.compile(r"src/kiln/([A-Za-z0-9_]+)")
_STDLIB = re.compile(r"python3\.\d+/([A-Za-z0-9_]+)")
WAITING = "(waiting in epoll: idle)"


def package_of(filename: str, function: str) -> str:
    """A readable owner for one profiled function."""
    if "poll' of 'select.epoll" in function:
        return WAITING
    for pattern, prefix in ((_KILN, "kiln."), (_SITE, ""), (_STDLIB, "stdlib ")):
        match = pattern.search(filename)
        if match:
            return prefix + match.group(1).removesuffix(".py")
    if filename == "~":
        return "builtins (" + function.split("'")[1] + ")" if "'" in function else "builtins"
    return filename


def by_package(profile: cProfile.Profile) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    for (filename, _line, function), (_cc, _nc, own, _cum, _callers) in stats.items():
        totals[package_of(filename, function)] += own
    return dict(totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("n", type=int, nargs="?", default=DEFAULT_N, help="concurrent builds")
    args = parser.parse_args()
    with emulator(builder_duration_ms=BUILDER_MS) as emu:
        asyncio.run(_build_all(emu.url, 1, []))  # imports and lazy set-up, not profiled
        profile = cProfile.Profile()
        cpu_before, emulator_before = cpu_seconds(), emu.cpu_s()
        started = time.perf_counter()
        profile.enable()
        failures = asyncio.run(_build_all(emu.url, args.n, []))
        profile.disable()
        wall = time.perf_counter() - started
        kiln_cpu, emulator_cpu = cpu_seconds() - cpu_before, emu.cpu_s() - emulator_before
    totals = by_package(profile)
    profiled = sum(v for k, v in totals.items() if k != WAITING)
    rows = [
        (name, seconds * MS / args.n, 100 * seconds / profiled if name != WAITING else None)
        for name, seconds in sorted(totals.items(), key=lambda kv: -kv[1])[:TOP]
    ]
    print(
        f"N={args.n}: wall {wall:.2f} s (profiler on), failures {sum(f is not None for f in failures)}"
    )
    print(
        f"CPU per build: kiln {kiln_cpu * MS / args.n:.1f} ms, emulator "
        f"{emulator_cpu * MS / args.n:.1f} ms (cProfile inflates kiln's)"
    )
    text = print_table(["package", "own ms per build", "% of kiln's work"], rows)
    write_results(
        "profile_many",
        {
            "n": args.n,
            "wall_s": wall,
            "kiln_cpu_ms_per_build": kiln_cpu * MS / args.n,
            "emulator_cpu_ms_per_build": emulator_cpu * MS / args.n,
            "by_package_ms_per_build": {k: v * MS / args.n for k, v in totals.items()},
            "table": text,
        },
    )


if __name__ == "__main__":
    main()
