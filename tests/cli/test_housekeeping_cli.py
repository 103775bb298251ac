"""Housekeeping of the store: `kiln ls` (header, --limit, --state from the declaration),
`kiln rm` and `kiln prune` (issue 13)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiln.cli import build_parser, housekeeping, main
from kiln.cli._records import EMBEDDED_EVENT, mark_embedded
from kiln.cli.housekeeping import duration
from kiln.machine import load_machine_spec, machine_names
from kiln.store import BuildNotFound, EventRow, Owner, open_store
from kiln.testing import TEST_TOKEN, EmulatorClient
from support.durable import crash_in, dead_owner
from support.paths import HELLO

SPEC = load_machine_spec()
DONE, FAILED, CANCELLED = SPEC.finals
EXIT_FAILED = 1
EXIT_USAGE = 2
# The embedded emulator's made-up bearer token must not be what marks a build.
TOKEN_WORD = "kiln-embedded-emulator"
LEASE_S = 3600.0


@pytest.fixture
def store_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'housekeeping.db'}"
    monkeypatch.setenv("KILN_STORE", url)
    yield url


async def _seed(url: str, builds: list[tuple[str, str, Owner | None]]) -> None:
    """Builds ``(id, state, owner)``, created in this order; a final state ends the build."""
    store = open_store(url)
    try:
        for build_id, state, owner in builds:
            record = await store.create(
                id=build_id, name=f"img-{build_id}", state=SPEC.initial, data={}
            )
            if state != SPEC.initial:
                await store.save(
                    build_id,
                    expected_version=record.version,
                    state=state,
                    data={},
                    sandbox_id=None,
                    final=state in SPEC.finals,
                )
            if owner is not None:
                await store.acquire(build_id, owner, lease_s=LEASE_S)
    finally:
        await store.close()


def _ls(capsys: pytest.CaptureFixture[str], *argv: str) -> list[list[str]]:
    assert main(["ls", *argv]) == 0
    return [line.split() for line in capsys.readouterr().out.splitlines()]


def test_ls_prints_a_header_then_one_build_a_line(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(_seed(store_url, [("a" * 32, DONE, None)]))
    rows = _ls(capsys)
    assert rows[0] == ["ID", "STATE", "NAME", "SANDBOX", "UPDATED"]
    assert [row[:3] for row in rows[1:]] == [["a" * 32, DONE, "img-" + "a" * 32]]


def test_ls_on_an_empty_store_prints_the_header_only(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _ls(capsys) == [["ID", "STATE", "NAME", "SANDBOX", "UPDATED"]]


def test_ls_limit_keeps_the_newest(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(_seed(store_url, [(f"b{n}", DONE, None) for n in range(5)]))
    assert [row[0] for row in _ls(capsys, "--limit", "2")[1:]] == ["b4", "b3"]


def test_ls_limit_must_be_positive(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["ls", "--limit", "0"])
    assert exited.value.code == EXIT_USAGE
    assert "--limit" in capsys.readouterr().err


def test_ls_state_running_lists_builds_a_live_process_holds(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    state = list(SPEC.states)[1]
    asyncio.run(
        _seed(
            store_url,
            [
                ("live", state, Owner.current()),
                ("dead", state, dead_owner()),
                ("queued", SPEC.initial, None),
                ("ended", FAILED, None),
            ],
        )
    )
    assert [row[0] for row in _ls(capsys, "--state", "running")[1:]] == ["live"]
    assert [row[0] for row in _ls(capsys, "--state", FAILED)[1:]] == ["ended"]
    assert [row[0] for row in _ls(capsys, "--state", state)[1:]] == ["dead", "live"]


def test_ls_state_choices_are_the_declared_states_and_finals() -> None:
    """Derived from every machine in states/ (the AST scan in tests/machine keeps them
    unspelled): a CAS build's states are listed as a Dockerfile build's are."""
    specs = [load_machine_spec(name=name) for name in machine_names()]
    declared = {name for spec in specs for name in (*spec.states, *spec.finals)}
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    state = next(a for a in sub.choices["ls"]._actions if a.dest == "state")
    choices = list(state.choices or ())
    assert choices[0] == "running"
    assert sorted(choices[1:]) == sorted(declared)
    finals = {name for spec in specs for name in spec.finals}
    assert set(choices[-len(finals) :]) == finals  # the ends come last


def test_ls_refuses_a_state_the_machine_does_not_declare(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["ls", "--state", "finished"])
    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "invalid choice: 'finished'" in err and DONE in err


# -- rm -------------------------------------------------------------------------------------------


async def _ids(url: str) -> list[str]:
    store = open_store(url)
    try:
        return [record.id for record in await store.list()]
    finally:
        await store.close()


async def _events(url: str, build_id: str) -> list[EventRow]:
    store = open_store(url)
    try:
        return await store.events(build_id)
    finally:
        await store.close()


def test_rm_removes_finished_builds_with_their_logs_by_id_or_prefix(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(
        _seed(store_url, [("done1", DONE, None), ("fail1", FAILED, None), ("k", DONE, None)])
    )
    asyncio.run(_append(store_url, "done1", [("build_log", {"message": "x"})]))

    assert main(["rm", "done1", "fai"]) == 0

    assert capsys.readouterr().out.split() == ["done1", "fail1"]
    assert asyncio.run(_ids(store_url)) == ["k"]
    with pytest.raises(BuildNotFound):
        asyncio.run(_events(store_url, "done1"))


def test_rm_never_removes_a_running_build_and_names_it(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    state = list(SPEC.states)[1]
    asyncio.run(_seed(store_url, [("live", state, Owner.current()), ("old", DONE, None)]))

    assert main(["rm", "live", "old"]) == EXIT_FAILED

    out, err = capsys.readouterr()
    assert out.split() == ["old"]  # the others still go, as docker rm does
    assert "build live is running" in err and state in err and "kiln cancel live" in err
    assert asyncio.run(_ids(store_url)) == ["live"]


def test_rm_keeps_an_unfinished_build_nobody_runs_whose_sandbox_may_exist(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    state = list(SPEC.states)[1]
    asyncio.run(_seed(store_url, [("stalled", state, dead_owner())]))

    assert main(["rm", "stalled"]) == EXIT_FAILED

    err = capsys.readouterr().err
    assert "build stalled has not finished" in err and "kiln resume stalled" in err
    assert asyncio.run(_ids(store_url)) == ["stalled"]


def test_rm_keeps_a_finished_build_whose_sandbox_the_reaper_still_watches(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def seed() -> None:
        store = open_store(store_url)
        try:
            record = await store.create(id="leaky", name="x", state=SPEC.initial, data={})
            await store.save(
                "leaky",
                expected_version=record.version,
                state=FAILED,
                data={},
                sandbox_id="sbx-1",
                final=True,
                holds_sandbox=True,
            )
        finally:
            await store.close()

    asyncio.run(seed())
    assert main(["rm", "leaky"]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "sbx-1 may still exist" in err and "kiln reap" in err
    assert asyncio.run(_ids(store_url)) == ["leaky"]


def test_rm_of_an_unknown_build_says_so(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rm", "nope"]) == EXIT_FAILED
    assert "no build 'nope' in the store" in capsys.readouterr().err


# -- prune ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("12h", 43_200), ("7d", 604_800), ("2w", 1_209_600), ("1d12h", 129_600)],
)
def test_durations(text: str, seconds: float) -> None:
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["7", "d", "7x", "-1d", "7 d", ""])
def test_a_malformed_duration_is_a_usage_error(
    text: str, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["prune", f"--older-than={text}"])
    assert exited.value.code == EXIT_USAGE
    assert "expected a duration such as 30m, 12h, 7d" in capsys.readouterr().err


async def _age(url: str, build_id: str, seconds: float) -> None:
    """Make the build look as if it ended ``seconds`` ago (the store stamps writes with now)."""
    import sqlite3

    path = url.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "UPDATE builds SET updated_at = updated_at - ? WHERE id = ?", (seconds, build_id)
        )


def test_prune_removes_builds_that_ended_long_enough_ago_and_nothing_unfinished(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    state = list(SPEC.states)[1]
    builds = [
        ("old", DONE, None),
        ("old-cancelled", CANCELLED, None),
        ("recent", FAILED, None),
        ("stalled", state, dead_owner()),
        ("live", state, Owner.current()),
    ]
    asyncio.run(_seed(store_url, builds))
    for build_id in ("old", "old-cancelled", "stalled", "live"):
        asyncio.run(_age(store_url, build_id, 8 * 86_400))

    assert main(["prune", "--older-than", "7d"]) == 0
    assert capsys.readouterr().out.strip() == "removed 2 builds that ended more than 1w ago"
    assert sorted(asyncio.run(_ids(store_url))) == ["live", "recent", "stalled"]

    assert main(["prune"]) == 0
    assert capsys.readouterr().out.strip() == "removed 1 build that ended"
    assert sorted(asyncio.run(_ids(store_url))) == ["live", "stalled"]


def test_prune_removes_more_builds_than_one_batch(
    store_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(housekeeping, "PRUNE_BATCH", 2)
    asyncio.run(_seed(store_url, [(f"b{n}", DONE, None) for n in range(5)]))
    assert main(["prune"]) == 0
    assert capsys.readouterr().out.strip() == "removed 5 builds that ended"
    assert asyncio.run(_ids(store_url)) == []


# -- a build on the embedded emulator that died ----------------------------------------------------


async def _append(url: str, build_id: str, events: list[tuple[str, dict[str, Any]]]) -> None:
    store = open_store(url)
    try:
        await store.append_events(build_id, events)
    finally:
        await store.close()


def test_kiln_build_on_the_embedded_emulator_marks_its_record(
    tmp_path: Path,
    store_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("TENSORLAKE_API_KEY", "TENSORLAKE_PAT", "TENSORLAKE_API_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert main(["build", str(HELLO)]) == 0
    capsys.readouterr()
    (build_id,) = asyncio.run(_ids(store_url))
    marks = [e for e in asyncio.run(_events(store_url, build_id)) if e.kind == EMBEDDED_EVENT]
    assert len(marks) == 1
    assert marks[0].data["api_url"].startswith("http://127.0.0.1:")
    assert TOKEN_WORD not in json.dumps(marks[0].data)
    assert main(["logs", build_id]) == 0
    url = marks[0].data["api_url"]
    assert f"-- runs on the embedded emulator at {url}" in capsys.readouterr().out


def test_kiln_build_against_an_api_url_leaves_no_mark(
    store_url: str,
    emulator: EmulatorClient,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TENSORLAKE_API_KEY", TEST_TOKEN)
    assert main(["build", str(HELLO), "--api-url", emulator.url]) == 0
    capsys.readouterr()
    (build_id,) = asyncio.run(_ids(store_url))
    assert EMBEDDED_EVENT not in {e.kind for e in asyncio.run(_events(store_url, build_id))}


@pytest.fixture
def dead_embedded_build(
    store_url: str, emulator: EmulatorClient, monkeypatch: pytest.MonkeyPatch
) -> str:
    """A build whose process died once it had a builder sandbox, marked as kiln build marks one
    it runs on the embedded emulator; no credentials in the environment, as where it ran."""

    async def crash() -> str:
        store = open_store(store_url)
        try:
            build_id = await crash_in(store, emulator.url, lambda s: s.sandbox_id is not None)
            await mark_embedded(store, build_id, emulator.url)
            return build_id
        finally:
            await store.close()

    build_id = asyncio.run(crash())
    for name in ("TENSORLAKE_API_KEY", "TENSORLAKE_PAT", "TENSORLAKE_API_URL"):
        monkeypatch.delenv(name, raising=False)
    return build_id


def test_resume_of_a_dead_embedded_build_says_it_cannot_be_resumed_and_can_be_removed(
    dead_embedded_build: str, capsys: pytest.CaptureFixture[str]
) -> None:
    build_id = dead_embedded_build
    assert main(["resume", build_id]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "ran on the embedded emulator of a kiln process that has ended" in err
    assert "cannot be resumed" in err and f"kiln rm {build_id}" in err
    assert "credentials" not in err


def test_cancel_of_a_dead_embedded_build_does_not_send_the_user_to_resume(
    dead_embedded_build: str, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    build_id = dead_embedded_build
    assert main(["cancel", build_id]) == 0
    out = capsys.readouterr().out
    assert "cannot be resumed or cancelled" in out and f"kiln rm {build_id}" in out
    assert "kiln resume" not in out


def test_status_of_a_dead_embedded_build_says_what_to_do(
    dead_embedded_build: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", dead_embedded_build]) == 0
    assert f"kiln rm {dead_embedded_build}" in capsys.readouterr().out


def test_rm_removes_a_dead_embedded_build(
    dead_embedded_build: str, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["rm", dead_embedded_build]) == 0
    assert capsys.readouterr().out.split() == [dead_embedded_build]
    assert asyncio.run(_ids(store_url)) == []


def test_prune_removes_dead_embedded_builds_but_not_other_unfinished_ones(
    dead_embedded_build: str, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    state = list(SPEC.states)[1]
    asyncio.run(
        _seed(store_url, [("stalled", state, dead_owner()), ("live", state, Owner.current())])
    )
    asyncio.run(_append(store_url, "live", [(EMBEDDED_EVENT, {"api_url": "http://127.0.0.1:1"})]))
    for build_id in (dead_embedded_build, "stalled", "live"):
        asyncio.run(_age(store_url, build_id, 2 * 86_400))

    assert main(["prune", "--older-than", "3d"]) == 0
    assert capsys.readouterr().out.strip() == "removed 0 builds that ended more than 3d ago"
    assert main(["prune", "--older-than", "1d"]) == 0
    assert capsys.readouterr().out.strip() == "removed 1 build that ended more than 1d ago"
    assert sorted(asyncio.run(_ids(store_url))) == ["live", "stalled"]
