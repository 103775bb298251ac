"""Benchmark 7: log throughput, a builder that writes 200,000 lines as fast as it can, on both
emulator profiles (on the cloud one the lines arrive in its framing: an id on every event, CRLF
line ends; the streams' idle and age limits are the profile's realistic ones, _common.CLOUD_TIMINGS,
which a build of this size does not reach).

Each client runs in a child process of its own (its CPU time and peak RSS are its own): kiln as
the CLI with its SQLite store (`kiln build --json`, a fresh state dir), the official client
through its Python binding with an ``emit`` callback that writes each event as a JSON line too.
The benchmark reads both children's stdout as it comes: the time measured is from the first
build-log line to the build's end (the child's exit). Builds alternate between the clients;
medians over the repetitions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    HELLO,
    PROFILES,
    PYTHON,
    ROOT,
    TOKEN,
    emulator,
    median,
    parse_args,
    print_table,
    set_builder,
    write_results,
)

LINES = 200_000
REPS = 3
TINY_LINES = 2_000
TINY_REPS = 1
TARGET_RATIO = 1.0
KIB = 1024
# The official client in its own process, each event printed as one JSON line (as kiln's CLI
# prints its own), so both pay for writing what they report.
OFFICIAL_CHILD = """
import json, sys
from tensorlake import _cloud_sdk as sdk
write = sys.stdout.write
def emit(event):
    write(json.dumps(event) + "\\n")
sdk.build_sandbox_image(sys.argv[1], sys.argv[2], sys.argv[3], cas=False, namespace="default",
                        emit=emit)
"""


def kiln_command(url: str) -> list[str]:
    # --no-cache: the same Dockerfile again would be a cache hit, with no builder at all.
    return [PYTHON, "-m", "kiln", "build", "--json", "--no-cache", "--api-url", url, str(HELLO)]


def official_command(url: str) -> list[str]:
    return [PYTHON, "-c", OFFICIAL_CHILD, url, TOKEN, str(HELLO)]


def is_log_line(line: str) -> bool:
    """Whether a stdout line of a child reports a build-log line (kiln's `event`, the official
    client's `type`)."""
    if "uild_log" not in line and "BuildLog" not in line:
        return False
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return False
    kind = str(event.get("event") or event.get("type") or "")
    return kind.lower().replace("_", "") == "buildlog"


def run_child(client: str, command: list[str], env: dict[str, str]) -> dict[str, Any]:
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    assert child.stdout is not None
    first_log: float | None = None
    logs = 0
    for line in child.stdout:
        if is_log_line(line):
            logs += 1
            if first_log is None:
                first_log = time.perf_counter()
    _pid, status, usage = os.wait4(child.pid, 0)
    ended = time.perf_counter()
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"{client} build failed with exit status {child.returncode}")
    return {
        "wall_s": ended - started,
        "log_s": ended - (first_log or ended),
        "log_lines": logs,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / KIB,
    }


def measure(profile: str, lines: int, reps: int, tiny: bool) -> dict[str, Any]:
    """Both clients' runs on one profile, interleaved, and their medians."""
    runs: dict[str, list[dict[str, Any]]] = {"kiln": [], "official": []}
    with (
        emulator(profile=profile, tiny=tiny) as emu,
        tempfile.TemporaryDirectory(prefix="kiln-bench-logs-") as state,
    ):
        set_builder(emu.url, log_lines=lines, line_pace_ms=0, duration_ms=0)
        env = {**os.environ, "XDG_STATE_HOME": state, "TENSORLAKE_API_KEY": TOKEN}
        commands = {"kiln": kiln_command(emu.url), "official": official_command(emu.url)}
        for rep in range(reps):
            order = ("kiln", "official") if rep % 2 == 0 else ("official", "kiln")
            for client in order:
                runs[client].append(run_child(client, commands[client], env))
        store_bytes = sum(f.stat().st_size for f in Path(state).rglob("*") if f.is_file())
    rows = []
    for client, results in runs.items():
        rows.append(
            {
                "profile": profile,
                "client": client,
                "log_s": median([r["log_s"] for r in results]),
                "wall_s": median([r["wall_s"] for r in results]),
                "cpu_s": median([r["cpu_s"] for r in results]),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
                "log_lines": min(r["log_lines"] for r in results),
            }
        )
    kiln, official = rows
    ratio = kiln["log_s"] / official["log_s"] if official["log_s"] else float("nan")
    return {
        "profile": profile,
        "runs": runs,
        "rows": rows,
        "ratio": ratio,
        "met": ratio <= TARGET_RATIO,
        "store_bytes": store_bytes,
    }


def main() -> None:
    args = parse_args(__doc__ or "")
    lines = TINY_LINES if args.tiny else LINES
    reps = TINY_REPS if args.tiny else REPS
    profiles = {profile: measure(profile, lines, reps, args.tiny) for profile in PROFILES}
    rows = [row for result in profiles.values() for row in result["rows"]]
    # The ideal profile's figures stay at the top level, where earlier results had them.
    ideal = profiles["ideal"]
    met = all(result["met"] for result in profiles.values())
    text = print_table(
        [
            "profile",
            "client",
            "first log line to end s",
            "build s",
            "CPU s",
            "peak RSS MB",
            "log lines",
        ],
        [
            row
            for profile, result in profiles.items()
            for row in [
                *(
                    (
                        profile,
                        r["client"],
                        r["log_s"],
                        r["wall_s"],
                        r["cpu_s"],
                        r["peak_rss_mb"],
                        r["log_lines"],
                    )
                    for r in result["rows"]
                ),
                (profile, "kiln/official", result["ratio"], "", "", "", ""),
            ]
        ],
    )
    store_bytes = {profile: result["store_bytes"] for profile, result in profiles.items()}
    print(f"builder lines: {lines}; kiln's SQLite state dir after the runs: {store_bytes} bytes")
    print(f"target: kiln <= {TARGET_RATIO}x official on each profile: {'met' if met else 'MISSED'}")
    write_results(
        "logs",
        {
            "tiny": args.tiny,
            "builder_lines": lines,
            "reps": reps,
            "runs": {profile: result["runs"] for profile, result in profiles.items()},
            "rows": rows,
            "ratio": ideal["ratio"],
            "ratios": {profile: result["ratio"] for profile, result in profiles.items()},
            "store_bytes": store_bytes,
            "table": text,
            "note": (
                "Medians of the runs of each client, interleaved, each in a process of its own:"
                " kiln as `kiln build --json --no-cache` with its SQLite store, the official client"
                " with an emit callback printing JSON lines. On the cloud profile the lines come in"
                " its framing (an id on every event, CRLF) through the proxy's own port."
            ),
            "target": {"ratio": TARGET_RATIO, "met": met},
        },
    )


if __name__ == "__main__":
    sys.exit(main())
