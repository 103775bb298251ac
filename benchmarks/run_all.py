"""Run every benchmark with the issue's sizes and regenerate benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/run_all.py            # the full run (about 45 minutes)
    .venv/bin/python benchmarks/run_all.py --tiny     # the smoke-test sizes (times nothing)
    .venv/bin/python benchmarks/run_all.py --only persistence   # re-run one, keep the others
    .venv/bin/python benchmarks/run_all.py --headline   # print the headline table (README's), run nothing

Each script runs in its own process, one after the other (never two at once: they would time
each other), prints its table and writes JSON to benchmarks/results/ (or $KILN_BENCH_RESULTS_DIR).
RESULTS.md gathers the tables, the machine, the exact commands and the analysis kept by hand in
benchmarks/ANALYSIS.md (the profiles behind any missed target). With ``--only`` one script is
re-run and RESULTS.md is rebuilt from its new JSON and the others' stored JSON, with each
script's command and duration kept in COMMANDS_FILE.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    PROFILES,
    PYTHON,
    ROOT,
    describe_profiles,
    fmt,
    machine_info,
    results_dir,
    table,
)

HERE = Path(__file__).resolve().parent
SCRIPTS = (
    ("bench_e2e", "e2e", "1. End to end, small context"),
    ("bench_large_context", "large_context", "2. Large context"),
    ("bench_many", "many", "3. Many concurrent builds in one process"),
    ("bench_persistence", "persistence", "4. Persistence cost"),
    ("bench_resume", "resume", "5. Resume on another worker"),
    ("bench_fleet", "fleet", "6. A fleet of workers on one PostgreSQL, under chaos"),
    ("bench_logs", "logs", "7. Log throughput"),
)
ANALYSIS = HERE / "ANALYSIS.md"
# bench_many's N whose wall time and event-loop lag the issue targets.
WALL_TARGET_N = 300
DEFAULT_OUTPUT = HERE / "RESULTS.md"
# In the results folder: per result name, the command that produced it and how long it took.
COMMANDS_FILE = "commands.json"

Commands = dict[str, tuple[str, float | None]]


def run_script(script: str, tiny: bool) -> tuple[str, float]:
    command = [PYTHON, str(HERE / f"{script}.py"), *(["--tiny"] if tiny else [])]
    shown = " ".join([".venv/bin/python", f"benchmarks/{script}.py", *command[2:]])
    print(f"+ {shown}", flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    return shown, time.perf_counter() - started


def load_commands() -> Commands:
    """The stored commands; a script never recorded shows its plain command, duration unknown."""
    path = results_dir() / COMMANDS_FILE
    stored = json.loads(path.read_text()) if path.exists() else {}
    commands: Commands = {
        name: (f".venv/bin/python benchmarks/{script}.py", None) for script, name, _ in SCRIPTS
    }
    for name, entry in stored.items():
        commands[name] = (entry["command"], entry["took_s"])
    return commands


def save_commands(commands: Commands) -> None:
    stored = {name: {"command": shown, "took_s": took} for name, (shown, took) in commands.items()}
    (results_dir() / COMMANDS_FILE).write_text(json.dumps(stored, indent=2) + "\n")


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((results_dir() / f"{name}.json").read_text())
    return data


def _target_line(result: dict[str, Any]) -> str:
    target = dict(result["target"])
    met = target.pop("met")
    goals = ", ".join(f"{key} {fmt(value)}" for key, value in target.items())
    line = f"Target ({goals}): **{'met' if met else 'missed'}**."
    # Benchmarks measured on both profiles say how each did.
    verdicts: dict[str, dict[str, Any]] = result.get("verdicts", {})
    if verdicts:
        line += " " + "; ".join(
            f"{profile}: "
            + ", ".join(
                f"{key} {'yes' if value else 'no'}"
                for key, value in verdict.items()
                if isinstance(value, bool)
            )
            for profile, verdict in verdicts.items()
        )
        line += "."
    return line


def _link(bandwidth_mbps: float | None) -> str:
    return "unpaced link" if bandwidth_mbps is None else f"{bandwidth_mbps:.0f} Mbit/s"


def _status(met: bool) -> str:
    return "met" if met else "**missed**"


def _of(result: dict[str, Any], profile: str, client: str | None = None) -> list[dict[str, Any]]:
    """A result's rows for one profile (and client); rows recorded before the cloud profile was
    measured carry neither and are the ideal profile's, kiln's where no client is named."""
    return [
        row
        for row in result["rows"]
        if row.get("profile", "ideal") == profile
        and (client is None or row.get("client", "kiln") == client)
    ]


def _ms(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.0f} ms"


def _e2e_rows(e2e: dict[str, Any], profile: str) -> list[tuple[Any, ...]]:
    rows = _of(e2e, profile)
    if not rows:
        return []
    top, bottom = rows[-1], rows[0]
    target = e2e["target"]
    delay = top.get("start_delay_s", 0.0)

    def wall(row: dict[str, Any], client: str) -> str:
        text = f"{row[f'{client}_median_s']:.2f} s"
        return text + (f" ({row[f'{client}_less_delay_s']:.2f} s less it)" if delay else "")

    def ratio(row: dict[str, Any]) -> str:
        text = f"{row['ratio']:.2f}x"
        return text + (f"; less the delay {row['ratio_less_delay']:.2f}x" if delay else "")

    def requests(row: dict[str, Any], client: str) -> str:
        polls = row.get(f"{client}_status_polls")
        return f"{row[f'{client}_requests']}" + (
            f" ({polls} of them status polls)" if polls else ""
        )

    wait = f", sandbox start delay {delay:g} s" if delay else ""
    return [
        (
            f"small build at {top['latency_ms']} ms latency, median{wait}",
            profile,
            wall(top, "kiln"),
            wall(top, "official"),
            f"kiln <= {target['ratio']}x official: {ratio(top)}",
            _status(top["ratio"] <= target["ratio"]),
        ),
        (
            f"small build at {bottom['latency_ms']} ms latency: wall, CPU per build",
            profile,
            f"{bottom['kiln_median_s'] * 1000:.0f} ms, {bottom['kiln_cpu_ms']:.0f} ms CPU",
            f"{bottom['official_median_s'] * 1000:.0f} ms, {bottom['official_cpu_ms']:.0f} ms CPU",
            f"<= {target['ratio_at_0_ms']}x: {ratio(bottom)}, CPU {bottom['cpu_ratio']:.2f}x",
            _status(
                bottom["ratio"] <= target["ratio_at_0_ms"]
                and bottom["cpu_ratio"] <= target["cpu_ratio_at_0_ms"]
            ),
        ),
        (
            "requests per build",
            profile,
            requests(top, "kiln"),
            requests(top, "official"),
            f"<= {target['requests']}",
            _status(top["kiln_requests"] <= target["requests"]),
        ),
    ]


def _many_rows(many: dict[str, Any], profile: str) -> list[tuple[Any, ...]]:
    kiln = _of(many, profile, "kiln")
    if not kiln:
        return []
    official = _of(many, profile, "official")
    target = many["target"]
    biggest = kiln[-1]
    wall_row = next((r for r in kiln if r["n"] == WALL_TARGET_N), biggest)
    factor = wall_row["wall_s"] / kiln[0]["wall_s"]
    # The target's lag is the one while builders stream; results recorded before it was measured
    # have only the whole run's.
    streaming = "stream_lag_p99_ms" in wall_row
    lag = wall_row["stream_lag_p99_ms"] if streaming else wall_row.get("lag_p99_ms")
    window = wall_row.get("stream_window_s")
    lag_text = (
        f"event-loop lag p99 {_ms(lag)} while builders stream"
        + (
            f" ({window:.1f} s window, {wall_row.get('stream_lag_samples')} samples)"
            if window
            else " (n/a: the builds never all streamed at once)"
        )
        + f", {_ms(wall_row.get('lag_p99_ms'))} over the whole run"
        if streaming
        else f"event-loop lag p99 {_ms(lag)} (whole run)"
    )
    theirs = next((r for r in official if r["n"] == wall_row["n"]), None)
    official_text = (
        f"{theirs['wall_s'] / official[0]['wall_s']:.1f}x one build ({theirs['n']} threads),"
        f" {theirs['failures']} failed"
        if theirs
        else ""
    )
    return [
        (
            f"{wall_row['n']} concurrent builds in one process, builders streaming logs",
            profile,
            f"{factor:.1f}x one build, {lag_text}",
            official_text,
            f"<= {target['wall_factor']:.0f}x, p99 <= {target['lag_p99_ms']:.0f} ms",
            _status(
                factor <= target["wall_factor"] and lag is not None and lag <= target["lag_p99_ms"]
            ),
        ),
        (
            f"{biggest['n']} concurrent builds in one process",
            profile,
            f"{biggest['peak_rss_mb']:.0f} MB RSS, {biggest['failures']} failed",
            "",
            f"< {target['rss_mb']} MB, none failed",
            _status(biggest["peak_rss_mb"] < target["rss_mb"] and not biggest["failures"]),
        ),
    ]


def _logs_rows(logs: dict[str, Any], profile: str) -> list[tuple[Any, ...]]:
    kiln, official = _of(logs, profile, "kiln"), _of(logs, profile, "official")
    if not kiln or not official:
        return []
    ratio = logs.get("ratios", {"ideal": logs["ratio"]})[profile]
    return [
        (
            f"log throughput: {logs['builder_lines']:,} builder lines, first line to end",
            profile,
            f"{kiln[0]['log_s']:.1f} s, {kiln[0]['peak_rss_mb']:.0f} MB RSS",
            f"{official[0]['log_s']:.1f} s, {official[0]['peak_rss_mb']:.0f} MB RSS",
            f"<= {logs['target']['ratio']}x: {ratio:.2f}x",
            _status(ratio <= logs["target"]["ratio"]),
        )
    ]


def headline() -> str:
    """The summary table for the README: one line per target of the issue and profile measured
    (the benchmarks that run on the ideal profile only say so)."""
    e2e, large, many, store, resume, fleet, logs = (
        _load(name) for _script, name, _title in SCRIPTS
    )
    chaos = fleet["rows"][0]
    context = large["summary"]
    sqlite = next(r for r in store["rows"] if r["store"] == "sqlite")
    lease = {r["case"]: r for r in resume["rows"]}
    resume_times = "; ".join(f"{case}: {r['resume_s']:.1f} s" for case, r in lease.items())
    ideal = "ideal"
    rows = [
        *(row for profile in PROFILES for row in _e2e_rows(e2e, profile)),
        (
            f"{large['total_mb']} MB context, {_link(large['bandwidth_mbps'])}: context phase",
            ideal,
            f"{context['kiln']['context_s']:.1f} s",
            f"{context['official']['context_s']:.1f} s",
            f"<= 0.6x: {large['context_ratio']:.2f}x",
            _status(large["context_ratio"] <= large["target"]["ratio"]),
        ),
        (
            "same, whole build",
            ideal,
            f"{context['kiln']['build_s']:.1f} s",
            f"{context['official']['build_s']:.1f} s",
            f"<= 0.6x: {large['build_ratio']:.2f}x",
            _status(large["build_ratio"] <= large["target"]["ratio"]),
        ),
        *(row for profile in PROFILES for row in _many_rows(many, profile)),
        *(row for profile in PROFILES for row in _logs_rows(logs, profile)),
        (
            "SQLite store, per transition",
            ideal,
            f"p50 {sqlite['persist_p50_ms']:.1f} ms, p99 {sqlite['persist_p99_ms']:.1f} ms",
            "",
            f"p99 <= {store['target']['sqlite_p99_ms']:.0f} ms",
            _status(store["target"]["met"]),
        ),
        (
            "resume on another worker (PostgreSQL)",
            ideal,
            resume_times,
            "",
            "follows the lease",
            "",
        ),
        (
            "requests before the builder is reattached",
            ideal,
            max(r["requests_before_reattach"] for r in resume["rows"]),
            "",
            f"<= {resume['target']['requests']}",
            _status(resume["target"]["met"]),
        ),
        (
            f"fleet: {chaos['builds']} builds, {chaos['workers']} workers x"
            f" {chaos['concurrency']}, a kill every {chaos['kill_every_s']:.0f} s",
            ideal,
            f"{chaos['done']} done, {chaos['builder_runs']} builder runs,"
            f" {chaos['builds_per_minute']:.0f}/min, {chaos['unreported_leaks']} unreported"
            " sandboxes",
            "",
            "all done once, none unreported",
            _status(
                chaos["done"] == chaos["builds"] == chaos["builder_runs"]
                and chaos["unreported_leaks"] == 0
            ),
        ),
        (
            "store load of a running build (PostgreSQL)",
            ideal,
            f"{chaos['steady_statements_per_build_s']:.1f} statements/s,"
            f" {chaos['steady_tx_per_build_s']:.2f} tx/s",
            "",
            "<= 5 statements, <= 1 tx per second",
            _status(
                chaos["steady_statements_per_build_s"] <= fleet["target"]["statements_per_build_s"]
                and chaos["steady_tx_per_build_s"] <= fleet["target"]["tx_per_build_s"]
            ),
        ),
        (
            "idle worker",
            ideal,
            f"{chaos['idle_tx_per_s']:.2f} tx/s",
            "",
            f"<= {fleet['target']['idle_tx_per_s']} tx/s",
            _status(chaos["idle_tx_per_s"] <= fleet["target"]["idle_tx_per_s"]),
        ),
        (
            f"claim at {chaos['history']:,} finished builds (in the database)",
            ideal,
            f"{chaos['claim_server_ms']:.2f} ms",
            "",
            f"<= {fleet['target']['claim_ms']:.0f} ms",
            _status(chaos["claim_server_ms"] <= fleet["target"]["claim_ms"]),
        ),
    ]
    return table(["benchmark", "profile", "kiln", "official client", "target", ""], rows)


def render(commands: Commands, tiny: bool, only: str | None) -> str:
    machine = machine_info()
    lines = [
        "# Benchmark results",
        "",
        "Generated by `.venv/bin/python benchmarks/run_all.py"
        + (" --tiny`: smoke-test sizes, the figures mean nothing." if tiny else "`.")
        + (
            f" Last run with `--only {only}`: the other results are from earlier runs."
            if only
            else ""
        )
        + " kiln and the official client (PyPI `tensorlake`, Rust core, `cas=False`) run against"
        " the same emulator (`kiln emulator`, its own process) in the same run, interleaved."
        " Benchmarks 1, 3 and 7 run on both emulator profiles: " + describe_profiles(tiny),
        "",
        "## Headline",
        "",
        headline(),
        "",
        "## Machine",
        "",
        table(["key", "value"], [(key, value) for key, value in machine.items()]),
        "",
        "## Commands",
        "",
        table(
            ["command", "took s", "load average when it ended (1, 5, 15 min)"],
            [
                (
                    f"`{commands[name][0]}`",
                    commands[name][1],
                    _load(name)["machine"]["load_average_1_5_15"],
                )
                for _script, name, _title in SCRIPTS
            ],
        ),
        "",
    ]
    for _script, name, title in SCRIPTS:
        result = _load(name)
        lines += [f"## {title}", "", result["table"], ""]
        # What a column means, when the table alone does not say (kept with the result).
        if result.get("note"):
            lines += [result["note"], ""]
        lines += [_target_line(result), ""]
    if ANALYSIS.exists():
        lines += [ANALYSIS.read_text().rstrip(), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="smoke-test sizes")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where RESULTS.md goes")
    parser.add_argument(
        "--only",
        choices=[name for _script, name, _title in SCRIPTS],
        help="re-run this benchmark alone; the others' stored results are kept",
    )
    parser.add_argument(
        "--headline",
        action="store_true",
        help="print the headline table from the stored results (the README's performance table)"
        " and run nothing",
    )
    args = parser.parse_args()
    if args.headline:
        print(headline())
        return
    commands = load_commands()
    for script, name, _title in SCRIPTS:
        if args.only in (None, name):
            commands[name] = run_script(script, args.tiny)
    save_commands(commands)
    args.output.write_text(render(commands, args.tiny, args.only))
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
