"""Benchmark 1: end to end, small context (examples/hello), kiln vs the official client.

The emulator's builder takes no time, so what is measured is the protocol: requests, their
round trips under injected latency, and each client's own work between them. Builds alternate
between the clients (which one goes first alternates too); medians over the repetitions.
"""

from __future__ import annotations

from typing import Any

from _common import (
    CLIENTS,
    emulator,
    interleaved,
    median,
    parse_args,
    print_table,
    request_log,
    warm_up,
    write_results,
)

LATENCIES_MS = (0, 10, 25)
REPS = 7
TINY_LATENCIES_MS = (0,)
TINY_REPS = 1
# The targets, at the highest latency.
TARGET_RATIO = 0.5
TARGET_REQUESTS = 16


def measure(latency_ms: int, reps: int) -> dict[str, Any]:
    walls: dict[str, list[float]] = {name: [] for name in CLIENTS}
    requests: dict[str, list[int]] = {name: [] for name in CLIENTS}
    with emulator(latency_ms=latency_ms) as emu:
        url = emu.url
        warm_up(url)
        for _rep, name in interleaved(reps):
            before = len(request_log(url))
            timeline = CLIENTS[name](url)
            walls[name].append(timeline.marks["end"] - timeline.started)
            requests[name].append(len(request_log(url)) - before)
    kiln_s, official_s = median(walls["kiln"]), median(walls["official"])
    return {
        "latency_ms": latency_ms,
        "reps": reps,
        "wall_s": walls,
        "requests": requests,
        "kiln_median_s": kiln_s,
        "official_median_s": official_s,
        "ratio": kiln_s / official_s,
        "kiln_requests": max(requests["kiln"]),
        "official_requests": max(requests["official"]),
    }


def main() -> None:
    args = parse_args(__doc__ or "")
    latencies = TINY_LATENCIES_MS if args.tiny else LATENCIES_MS
    reps = TINY_REPS if args.tiny else REPS
    rows = [measure(latency, reps) for latency in latencies]
    top = rows[-1]
    met = top["ratio"] <= TARGET_RATIO and top["kiln_requests"] <= TARGET_REQUESTS
    text = print_table(
        ["latency ms", "kiln s", "official s", "kiln/official", "kiln req", "official req"],
        [
            (
                r["latency_ms"],
                r["kiln_median_s"],
                r["official_median_s"],
                r["ratio"],
                r["kiln_requests"],
                r["official_requests"],
            )
            for r in rows
        ],
    )
    print(
        f"target at {top['latency_ms']} ms: ratio <= {TARGET_RATIO}, requests <= "
        f"{TARGET_REQUESTS}: {'met' if met else 'MISSED'}"
    )
    write_results(
        "e2e",
        {
            "tiny": args.tiny,
            "rows": rows,
            "table": text,
            "target": {"ratio": TARGET_RATIO, "requests": TARGET_REQUESTS, "met": met},
        },
    )


if __name__ == "__main__":
    main()
