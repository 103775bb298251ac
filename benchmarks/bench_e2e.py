"""Benchmark 1: end to end, small context (examples/hello), kiln vs the official client, on both
emulator profiles.

The emulator's builder takes no time, so what is measured is the protocol: requests, their
round trips under injected latency, and each client's own work between them, as wall time and
as this process's CPU time over each build (both clients run in it). Builds alternate between the
clients (which one goes first alternates too); medians over the repetitions.

On the cloud profile a new sandbox stays pending for its start delay (1.5 s), which both clients
must wait out and which dominates a small build. Besides the wall time the table gives each
client's time less that delay (what is left is its own: requests, round trips, and how late its
polling notices the running sandbox), and that poll lag alone: from the moment the sandbox runs
(its create answered, plus the delay) to the client's first request to its proxy.
"""

from __future__ import annotations

import re
from typing import Any

from _common import (
    CLIENTS,
    PROFILES,
    cpu_seconds,
    emulator,
    interleaved,
    median,
    parse_args,
    print_table,
    request_log,
    start_delay_s,
    warm_up,
    write_results,
)

LATENCIES_MS = {"ideal": (0, 10, 25), "cloud": (0, 25)}
REPS = 7
TINY_LATENCIES_MS = (0,)
TINY_REPS = 1
# The targets (issue 14): at the highest latency, and at no latency, where the round
# trips no longer hide each client's own work.
TARGET_RATIO = 0.35
TARGET_REQUESTS = 10
TARGET_RATIO_AT_0_MS = 1.0
TARGET_CPU_RATIO_AT_0_MS = 1.0
MS = 1000.0
NOTE = (
    'Medians of the builds of each client, interleaved. "Less start delay" is the wall time less'
    " the cloud profile's sandbox start delay, which both clients wait out (on the ideal profile"
    " there is none): what is left is the client's own work, its round trips and its poll lag,"
    " the time from the sandbox running (its create answered, plus the delay) to the client's"
    " first request to the sandbox's proxy, which its status polling decides. CPU is this"
    " process's over each build (getrusage). Requests are counted in the emulator's log, status"
    " polls (GET of the sandbox) in brackets."
)
_CREATE = re.compile(r"/sandboxes/?$")
_STATUS_POLL = re.compile(r"/sandboxes/[^/]+$")


def _sandbox_timing(entries: list[dict[str, Any]], delay_s: float) -> tuple[int, float | None]:
    """From one build's request-log entries: its sandbox status polls, and its poll lag (the
    first proxied request's arrival less the sandbox's running moment), None without a create."""
    polls = sum(1 for e in entries if e["method"] == "GET" and _STATUS_POLL.search(e["path"]))
    creates = [e for e in entries if e["method"] == "POST" and _CREATE.search(e["path"])]
    if not creates:
        return polls, None
    running_at = creates[0]["time"] + creates[0]["duration_ms"] / MS + delay_s
    proxied = [e["time"] for e in entries if e.get("sandbox") and e["time"] >= creates[0]["time"]]
    return polls, (min(proxied) - running_at) if proxied else None


def measure(profile: str, latency_ms: int, reps: int, tiny: bool) -> dict[str, Any]:
    walls: dict[str, list[float]] = {name: [] for name in CLIENTS}
    requests: dict[str, list[int]] = {name: [] for name in CLIENTS}
    polls: dict[str, list[int]] = {name: [] for name in CLIENTS}
    poll_lags: dict[str, list[float]] = {name: [] for name in CLIENTS}
    cpus: dict[str, list[float]] = {name: [] for name in CLIENTS}
    delay = start_delay_s(profile, tiny)
    with emulator(latency_ms=latency_ms, profile=profile, tiny=tiny) as emu:
        url = emu.url
        warm_up(url)
        for _rep, name in interleaved(reps):
            before = len(request_log(url))
            cpu_before = cpu_seconds()
            timeline = CLIENTS[name](url)
            cpus[name].append(cpu_seconds() - cpu_before)
            walls[name].append(timeline.marks["end"] - timeline.started)
            entries = request_log(url)[before:]
            requests[name].append(len(entries))
            build_polls, lag = _sandbox_timing(entries, delay)
            polls[name].append(build_polls)
            if lag is not None:
                poll_lags[name].append(lag)
    kiln_s, official_s = median(walls["kiln"]), median(walls["official"])
    kiln_cpu, official_cpu = median(cpus["kiln"]), median(cpus["official"])
    kiln_own, official_own = kiln_s - delay, official_s - delay
    return {
        "profile": profile,
        "latency_ms": latency_ms,
        "reps": reps,
        "start_delay_s": delay,
        "wall_s": walls,
        "requests": requests,
        "status_polls": polls,
        "poll_lag_s": poll_lags,
        "kiln_median_s": kiln_s,
        "official_median_s": official_s,
        "ratio": kiln_s / official_s,
        # Less the start delay both clients wait out (the same as the wall time on ideal).
        "kiln_less_delay_s": kiln_own,
        "official_less_delay_s": official_own,
        "ratio_less_delay": kiln_own / official_own if official_own > 0 else float("nan"),
        "kiln_poll_lag_ms": median(poll_lags["kiln"]) * MS,
        "official_poll_lag_ms": median(poll_lags["official"]) * MS,
        "cpu_s": cpus,
        "kiln_cpu_ms": kiln_cpu * MS,
        "official_cpu_ms": official_cpu * MS,
        "cpu_ratio": kiln_cpu / official_cpu if official_cpu else float("nan"),
        "kiln_requests": max(requests["kiln"]),
        "official_requests": max(requests["official"]),
        "kiln_status_polls": max(polls["kiln"]),
        "official_status_polls": max(polls["official"]),
    }


def verdict(rows: list[dict[str, Any]]) -> dict[str, bool]:
    """One profile's rows: the target at the highest latency, and at 0 ms."""
    top, bottom = rows[-1], rows[0]
    return {
        "met": top["ratio"] <= TARGET_RATIO and top["kiln_requests"] <= TARGET_REQUESTS,
        "met_at_0_ms": bottom["ratio"] <= TARGET_RATIO_AT_0_MS
        and bottom["cpu_ratio"] <= TARGET_CPU_RATIO_AT_0_MS,
    }


def main() -> None:
    args = parse_args(__doc__ or "")
    reps = TINY_REPS if args.tiny else REPS
    rows = [
        measure(profile, latency, reps, args.tiny)
        for profile in PROFILES
        for latency in (TINY_LATENCIES_MS if args.tiny else LATENCIES_MS[profile])
    ]
    verdicts = {
        profile: verdict([r for r in rows if r["profile"] == profile]) for profile in PROFILES
    }
    text = print_table(
        [
            "profile",
            "latency ms",
            "kiln s",
            "official s",
            "kiln/official",
            "less start delay: kiln s",
            "official s",
            "kiln/official",
            "poll lag: kiln ms",
            "official ms",
            "kiln CPU ms",
            "official CPU ms",
            "CPU kiln/official",
            "kiln req (polls)",
            "official req (polls)",
        ],
        [
            (
                r["profile"],
                r["latency_ms"],
                r["kiln_median_s"],
                r["official_median_s"],
                r["ratio"],
                r["kiln_less_delay_s"],
                r["official_less_delay_s"],
                r["ratio_less_delay"],
                r["kiln_poll_lag_ms"],
                r["official_poll_lag_ms"],
                r["kiln_cpu_ms"],
                r["official_cpu_ms"],
                r["cpu_ratio"],
                f"{r['kiln_requests']} ({r['kiln_status_polls']})",
                f"{r['official_requests']} ({r['official_status_polls']})",
            )
            for r in rows
        ],
    )
    for profile, result in verdicts.items():
        own = [r for r in rows if r["profile"] == profile]
        print(
            f"{profile}: at {own[-1]['latency_ms']} ms ratio <= {TARGET_RATIO}, requests <= "
            f"{TARGET_REQUESTS}: {'met' if result['met'] else 'MISSED'}; at"
            f" {own[0]['latency_ms']} ms wall and CPU <= {TARGET_RATIO_AT_0_MS}x:"
            f" {'met' if result['met_at_0_ms'] else 'MISSED'}"
        )
    write_results(
        "e2e",
        {
            "tiny": args.tiny,
            "rows": rows,
            "table": text,
            "verdicts": verdicts,
            "note": NOTE,
            "target": {
                "ratio": TARGET_RATIO,
                "requests": TARGET_REQUESTS,
                "ratio_at_0_ms": TARGET_RATIO_AT_0_MS,
                "cpu_ratio_at_0_ms": TARGET_CPU_RATIO_AT_0_MS,
                "met": all(v["met"] for v in verdicts.values()),
                "met_at_0_ms": all(v["met_at_0_ms"] for v in verdicts.values()),
            },
        },
    )


if __name__ == "__main__":
    main()
