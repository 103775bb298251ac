"""Housekeeping of the store: `kiln ls` (header, --limit, --state from the declaration),
`kiln rm` and `kiln prune` (issue 13)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.cli import _parser, main
from kiln.machine import load_machine_spec, machine_names
from kiln.store import Owner, open_store
from support.durable import dead_owner

SPEC = load_machine_spec()
DONE, FAILED, CANCELLED = SPEC.finals
EXIT_USAGE = 2
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
    parser = _parser()
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
