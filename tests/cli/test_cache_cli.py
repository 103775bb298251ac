"""The build cache from the command line: `kiln build` twice, `--no-cache`, a changed input, the
embedded emulator, and how `kiln plan`, `kiln ls` and `kiln status` show the key and the hits."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from kiln.testing import TEST_TOKEN, EmulatorClient
from support.events import check_event
from support.paths import HELLO
from support.processes import kiln_env, run_kiln


@pytest.fixture
def hello(tmp_path: Path) -> Path:
    """A copy of examples/hello that a test may change."""
    copy = tmp_path / "hello"
    shutil.copytree(HELLO.parent, copy)
    return copy


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return kiln_env(tmp_path, store_url=f"sqlite:///{tmp_path / 'builds.db'}", token=TEST_TOKEN)


def kiln(args: Sequence[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_kiln(args, env)


def build(
    env: dict[str, str], *args: str, emulator: EmulatorClient | None = None
) -> dict[str, Any]:
    """`kiln build ARGS --json`, which must exit 0; its result line."""
    remote = ["--api-url", emulator.url] if emulator is not None else []
    run = kiln(["build", *args, *remote, "--json"], env)
    assert run.returncode == 0, run.stderr
    lines = [check_event(json.loads(line)) for line in run.stdout.splitlines()]
    result: dict[str, Any] = lines[-1]
    assert result["type"] == "result" and result["state"] == "done"
    return result


def test_hello_built_twice_is_cached_the_second_time(
    env: dict[str, str], emulator: EmulatorClient, hello: Path
) -> None:
    first = build(env, str(hello), emulator=emulator)
    assert first["cached"] is False
    sent, made = len(emulator.requests()), len(emulator.sandboxes())

    second = build(env, str(hello), emulator=emulator)

    assert second["cached"] is True
    assert second["template"] == first["template"]
    assert len(emulator.requests()) - sent <= 1
    assert len(emulator.sandboxes()) == made


@pytest.mark.parametrize(
    "change",
    ["--no-cache", "--build-arg", "context file"],
)
def test_no_cache_a_build_arg_or_a_changed_context_file_builds(
    env: dict[str, str], emulator: EmulatorClient, hello: Path, change: str
) -> None:
    build(env, str(hello), emulator=emulator)
    assert build(env, str(hello), emulator=emulator)["cached"] is True
    args = [str(hello)]
    if change == "context file":
        (hello / "requirements.txt").write_text("# changed\n")
    elif change == "--build-arg":
        # A predefined argument needs no ARG: Docker, and kiln, declare it in each stage sent.
        args += ["--build-arg", "HTTP_PROXY=http://proxy.invalid:3128"]
    else:
        args.append(change)
    made = len(emulator.sandboxes())

    again = build(env, *args, emulator=emulator)

    assert again["cached"] is False
    assert len(emulator.sandboxes()) == made + 1


def test_the_embedded_emulator_keeps_what_the_cache_returns(
    env: dict[str, str], hello: Path
) -> None:
    env.pop("TENSORLAKE_API_KEY")
    first = build(env, str(hello))
    second = build(env, str(hello))
    assert (first["cached"], second["cached"]) == (False, True)
    assert second["template"]["id"] == first["template"]["id"]


def test_plan_shows_the_key_the_build_stores_and_ls_and_status_show_the_hit(
    env: dict[str, str], emulator: EmulatorClient, hello: Path
) -> None:
    planned = kiln(["plan", str(hello), "--json"], env)
    assert planned.returncode == 0, planned.stderr
    key = json.loads(planned.stdout)["key"]
    public = json.loads(kiln(["plan", str(hello), "--json", "--public"], env).stdout)["key"]
    assert key.startswith("sha256:") and public != key
    assert f"Build key:   {key}" in kiln(["plan", str(hello)], env).stdout

    first = build(env, str(hello), emulator=emulator)
    second = build(env, str(hello), emulator=emulator)

    status = json.loads(kiln(["status", second["id"], "--json"], env).stdout)
    assert (status["key"], status["cached"], status["cached_from"]) == (key, True, first["id"])
    assert json.loads(kiln(["status", first["id"], "--json"], env).stdout)["key"] == key
    text = kiln(["status", second["id"]], env).stdout
    assert "done (cached)" in text and f"cached    from build {first['id']}" in text
    listed = json.loads(kiln(["ls", "--json"], env).stdout)
    assert [(b["id"], b["cached"]) for b in listed] == [(second["id"], True), (first["id"], False)]
    lines = kiln(["ls"], env).stdout.splitlines()
    assert "done (cached)" in next(line for line in lines if second["id"] in line)
