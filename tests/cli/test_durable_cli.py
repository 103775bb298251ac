"""`kiln build` persists and names its build; `kiln status`, `ls`, `logs`, `resume`, `cancel` and
`submit` read and act on the store given by --store or $KILN_STORE."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import subprocess
import time
from pathlib import Path

import pytest

from kiln.cli import main
from kiln.cli.durable import _logs
from kiln.machine import load_machine_spec
from kiln.store import MemoryStore, Owner, open_store
from kiln.testing import TEST_TOKEN, EmulatorClient
from support.durable import crash_in
from support.events import check_event
from support.paths import HELLO, REPO
from support.processes import BUILD_ID, kiln_argv, kiln_env

pytestmark = pytest.mark.usefixtures("restore_logging")

SUMMARY_KEYS = {"id", "name", "state", "sandbox_id", "created_at", "updated_at", "cached"}
HAPPY_PHASES = list(load_machine_spec().states)
EXIT_USAGE = 2


def _build(emulator: EmulatorClient, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    code = main(["build", str(HELLO), "--api-url", emulator.url, *extra])
    err = capsys.readouterr().err
    found = BUILD_ID.search(err)
    assert found, err
    assert err.index("Build ") < err.index("Loading Dockerfile"), "the id comes first"
    assert code in (0, 1)
    return found.group(1)


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> object:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_a_build_is_persisted_and_shown_by_status_ls_and_logs(
    store_env: str, emulator: EmulatorClient, capsys: pytest.CaptureFixture[str]
) -> None:
    build_id = _build(emulator, capsys)

    listed = _json(capsys, ["ls", "--json"])
    assert isinstance(listed, list) and len(listed) == 1
    assert set(listed[0]) == SUMMARY_KEYS and listed[0]["state"] == "done"
    # Times as ISO 8601, as the text output shows them (not seconds since the epoch).
    for key in ("created_at", "updated_at"):
        assert datetime.datetime.fromisoformat(listed[0][key]).tzinfo is not None

    status = _json(capsys, ["status", build_id[:8], "--json"])
    assert isinstance(status, dict) and status["id"] == build_id and status["state"] == "done"
    assert [row["phase"] for row in status["timeline"]] == HAPPY_PHASES
    assert status["log_tail"][-1].startswith("metadata written")
    assert status["result"]["name"] == "hello"
    assert status["created_at"] == listed[0]["created_at"]
    assert datetime.datetime.fromisoformat(status["updated_at"]).tzinfo is not None

    assert main(["status", build_id]) == 0
    text = capsys.readouterr().out
    assert "state     done" in text and "run_builder" in text and "last log lines" in text

    assert main(["logs", build_id]) == 0
    log = capsys.readouterr().out
    assert "Step 1/7 : FROM python:3.12-slim" in log and "-- cleanup -> done (succeed)" in log


def test_ls_lists_newest_first_and_filters_by_state(
    store_env: str, emulator: EmulatorClient, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _build(emulator, capsys)
    emulator.set_builder(exit_code=2)
    second = _build(emulator, capsys, "--no-cache")

    listed = _json(capsys, ["ls", "--json"])
    assert [b["id"] for b in listed] == [second, first]  # type: ignore[union-attr]
    failed = _json(capsys, ["ls", "--json", "--state", "failed"])
    assert [b["id"] for b in failed] == [second]  # type: ignore[union-attr]

    assert main(["status", second]) == 0
    assert "error     " in capsys.readouterr().out


def test_resume_of_a_finished_build_reports_it_and_sends_nothing(
    store_env: str, emulator: EmulatorClient, capsys: pytest.CaptureFixture[str]
) -> None:
    build_id = _build(emulator, capsys)
    sent = len(emulator.requests())

    assert main(["resume", build_id]) == 0
    assert "already ended: done (not run again)" in capsys.readouterr().out
    assert len(emulator.requests()) == sent

    emulator.set_builder(exit_code=2)
    failed = _build(emulator, capsys, "--no-cache")
    assert main(["resume", failed]) == 1
    capsys.readouterr()

    # With --json, the answer is the result line a build ends with, not text.
    assert main(["resume", build_id, "--json"]) == 0
    [done] = [check_event(json.loads(line)) for line in capsys.readouterr().out.splitlines()]
    assert (done["type"], done["state"], done["id"]) == ("result", "done", build_id)
    assert done["template"]["name"] == "hello" and done["error"] is None
    assert main(["resume", failed, "--json"]) == 1
    [ended] = [check_event(json.loads(line)) for line in capsys.readouterr().out.splitlines()]
    assert ended["state"] == "failed" and "exit code 2" in ended["error"]
    assert ended["template"] is None


def test_resume_json_of_an_unknown_build_ends_with_a_result_object(
    store_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["resume", "0123456789abcdef", "--json"]) == EXIT_USAGE
    [result] = [check_event(json.loads(line)) for line in capsys.readouterr().out.splitlines()]
    assert result["state"] is None and "0123456789abcdef" in result["error"]


def test_resume_refuses_a_build_whose_owner_is_alive_and_names_it(
    store_env: str, emulator: EmulatorClient, capsys: pytest.CaptureFixture[str]
) -> None:
    async def stop_and_hold() -> str:
        store = open_store(store_env)
        try:
            build_id = await crash_in(store, emulator.url, lambda s: s.state == "upload")
            await store.acquire(build_id, Owner.current("busy-elsewhere"), lease_s=60)
            return build_id
        finally:
            await store.close()

    build_id = asyncio.run(stop_and_hold())

    assert main(["resume", build_id]) == 1
    assert "owned by worker busy-elsewhere" in capsys.readouterr().err
    assert main(["status", build_id]) == 0
    assert "busy-elsewhere" in capsys.readouterr().out

    asyncio.run(_release(store_env, build_id, Owner.current("busy-elsewhere")))
    assert main(["resume", build_id]) == 0
    capsys.readouterr()
    status = _json(capsys, ["status", build_id, "--json"])
    assert isinstance(status, dict) and status["state"] == "done"
    assert [r["state"] for r in status["resumes"]] == ["upload"]
    assert all(datetime.datetime.fromisoformat(r["at"]) for r in status["resumes"])
    assert "resumed   in upload by worker kiln-" in _text(capsys, ["status", build_id])


async def _release(url: str, build_id: str, owner: Owner) -> None:
    store = open_store(url)
    try:
        await store.release(build_id, owner)
    finally:
        await store.close()


def _text(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out


def test_logs_follow_prints_a_live_build_to_its_end(
    store_env: str, emulator: EmulatorClient, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    emulator.set_builder(log_lines=15, line_pace_ms=60)
    env = kiln_env(tmp_path, store_url=store_env, token=TEST_TOKEN)
    argv = kiln_argv("build", str(HELLO), "--api-url", emulator.url)
    with subprocess.Popen(argv, env=env, cwd=REPO, stderr=subprocess.PIPE, text=True) as build:
        assert build.stderr is not None
        found = None
        while found is None and (line := build.stderr.readline()):
            found = BUILD_ID.search(line)
        assert found is not None

        assert main(["logs", found.group(1), "--follow"]) == 0

        assert build.wait(timeout=30) == 0
    log = capsys.readouterr().out
    assert "progress 15/15" in log and log.rstrip().endswith("-- cleanup -> done (succeed)")


def test_submit_queues_a_build_for_a_worker(
    store_env: str, emulator: EmulatorClient, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["submit", str(HELLO), "--api-url", emulator.url, "--name", "queued"]) == 0
    build_id = capsys.readouterr().out.strip()

    status = _json(capsys, ["status", build_id, "--json"])
    assert isinstance(status, dict)
    assert (status["name"], status["state"], status["owner"]) == ("queued", "resolve_scope", None)
    assert emulator.requests() == [], "submitting plans locally and sends nothing"


def test_cancel_is_recorded_and_idempotent(
    store_env: str, emulator: EmulatorClient, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["submit", str(HELLO), "--api-url", emulator.url]) == 0
    build_id = capsys.readouterr().out.strip()

    for _ in range(2):
        assert main(["cancel", build_id]) == 0
        assert "nothing runs it now" in capsys.readouterr().out
    assert _json(capsys, ["status", build_id, "--json"])["cancel_requested"] is True  # type: ignore[index]


def test_store_flag_wins_over_the_environment_and_bad_input_is_a_usage_error(
    store_env: str, emulator: EmulatorClient, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _build(emulator, capsys)
    other = f"sqlite:///{tmp_path / 'other.db'}"

    assert _json(capsys, ["ls", "--json", "--store", other]) == []
    assert main(["ls", "--store", "mysql://nope"]) == EXIT_USAGE
    assert "sqlite:///" in capsys.readouterr().err, "the accepted forms are named"
    assert main(["status", "0123456789"]) == EXIT_USAGE
    assert "kiln ls" in capsys.readouterr().err


def test_a_worker_without_credentials_refuses_to_start(
    store_env: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TENSORLAKE_API_KEY")

    assert main(["worker"]) == 1
    assert "no Tensorlake credentials" in capsys.readouterr().err


async def test_logs_mark_where_the_bounded_log_dropped_events(
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = MemoryStore(head_events=2, tail_events=2)
    await store.create(id="b1", name="hello", state="run_builder", data={})
    await store.append_events("b1", [("build_log", {"message": f"line {n}"}) for n in range(6)])

    assert await _logs(argparse.Namespace(build_id="b1", follow=False), store) == 0

    assert capsys.readouterr().out.splitlines() == [
        "line 0",
        "line 1",
        "-- (2 events dropped here: the log keeps its head and tail)",
        "line 4",
        "line 5",
    ]


def test_status_json_gives_an_unrecorded_sandbox_s_times_as_iso_8601(
    store_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    request = {"name": "kiln-builder-x", "requested_at": now, "expires_by": now + 600}

    async def seed() -> None:
        store = open_store(store_env)
        try:
            await store.create(
                id="c" * 32, name="img", state=HAPPY_PHASES[0], data={"sandbox_request": request}
            )
        finally:
            await store.close()

    asyncio.run(seed())
    status = _json(capsys, ["status", "c" * 32, "--json"])
    [sandbox] = status["unrecorded_sandboxes"]  # type: ignore[index]
    assert sandbox["name"] == "kiln-builder-x"
    for key in ("requested_at", "expires_by"):
        assert datetime.datetime.fromisoformat(sandbox[key]).tzinfo is not None
