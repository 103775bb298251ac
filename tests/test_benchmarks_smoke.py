"""The benchmark scripts run, end to end, at their tiny sizes (no timing is checked).

``benchmarks/run_all.py --tiny`` runs every script once, writing its JSON into a temporary
directory (never over the recorded results) and a RESULTS.md there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.paths import REPO

RUN_ALL = REPO / "benchmarks" / "run_all.py"
RESULTS_DIR_ENV = "KILN_BENCH_RESULTS_DIR"
RUN_LIMIT_S = 900
RESULTS = ("e2e", "large_context", "many", "persistence", "resume", "fleet", "logs")
# Issue 14: these compare kiln with the official client on both emulator profiles.
PROFILES = {"ideal", "cloud"}
CLIENTS = {"kiln", "official"}

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, RESULTS_DIR_ENV: str(out)}
    done = subprocess.run(
        [sys.executable, str(RUN_ALL), "--tiny", "--output", str(out / "RESULTS.md")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_LIMIT_S,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.mark.parametrize("name", RESULTS)
def test_each_benchmark_writes_its_tiny_results(tiny_run: Path, name: str) -> None:
    data = json.loads((tiny_run / f"{name}.json").read_text())

    assert data["tiny"] is True
    assert data["table"].startswith("|")
    assert {"python", "cpus", "platform"} <= set(data["machine"])
    assert isinstance(data["target"]["met"], bool)


def test_both_clients_complete_the_compared_builds(tiny_run: Path) -> None:
    e2e = json.loads((tiny_run / "e2e.json").read_text())
    large = json.loads((tiny_run / "large_context.json").read_text())

    assert all(row["kiln_requests"] > 0 and row["official_requests"] > 0 for row in e2e["rows"])
    assert set(large["summary"]) == {"kiln", "official"}


def test_both_clients_complete_their_builds_on_both_profiles(tiny_run: Path) -> None:
    e2e = json.loads((tiny_run / "e2e.json").read_text())
    many = json.loads((tiny_run / "many.json").read_text())
    logs = json.loads((tiny_run / "logs.json").read_text())

    assert {row["profile"] for row in e2e["rows"]} == PROFILES
    assert {(row["profile"], row["client"]) for row in many["rows"]} == {
        (profile, client) for profile in PROFILES for client in CLIENTS
    }
    assert {(row["profile"], row["client"]) for row in logs["rows"]} == {
        (profile, client) for profile in PROFILES for client in CLIENTS
    }
    assert all(row["log_lines"] >= logs["builder_lines"] for row in logs["rows"])
    cloud = [row for row in e2e["rows"] if row["profile"] == "cloud"]
    # Both clients wait for the pending sandbox on the cloud profile: at least one status poll.
    assert all(row["kiln_status_polls"] > 0 and row["official_status_polls"] > 0 for row in cloud)


def test_many_builds_all_succeed(tiny_run: Path) -> None:
    many = json.loads((tiny_run / "many.json").read_text())

    assert [row["failures"] for row in many["rows"]] == [0] * len(many["rows"])


def test_many_builds_report_the_loop_lag_while_builders_stream(tiny_run: Path) -> None:
    many = json.loads((tiny_run / "many.json").read_text())
    kiln = [row for row in many["rows"] if row["client"] == "kiln"]

    assert all("stream_lag_p99_ms" in row and "lag_p99_ms" in row for row in kiln)
    assert set(many["verdicts"]) == PROFILES


def test_results_md_gathers_every_table_and_the_commands(tiny_run: Path) -> None:
    text = (tiny_run / "RESULTS.md").read_text()

    for name in RESULTS:
        table = json.loads((tiny_run / f"{name}.json").read_text())["table"]
        assert table in text
    assert "benchmarks/bench_resume.py --tiny" in text
    assert "## Machine" in text
    headline = text.split("## Headline", 1)[1].split("## Machine", 1)[0]
    assert "| cloud " in headline
    assert "| ideal " in headline
