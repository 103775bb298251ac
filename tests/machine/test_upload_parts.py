"""A large context goes as several archives, each extracted while the next one is sent."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

from kiln.plan import plan_dockerfile
from kiln.testing import EmulatorClient
from support.emulator import snapshot_files
from support.machine import run_to_end

# The package re-exports the handler function under the module's name: fetch the module itself.
upload_module = importlib.import_module("kiln.machine.handlers.upload")

# Small parts, so that a context of a few files is split as a large one would be.
PART_BYTES = 8_000
FILES = 9
FILE_BYTES = 3_000


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upload_module, "PART_BYTES", PART_BYTES)


def make_context(root: Path) -> dict[str, bytes]:
    files = {f"src/d{i % 2}/f{i}.bin": os.urandom(FILE_BYTES) for i in range(FILES)}
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)
    (root / "Dockerfile").write_text("FROM python:3.12-slim\nCOPY . /app\n")
    return files


@pytest.mark.usefixtures("small_parts")
async def test_every_file_arrives_through_the_parts(
    emulator: EmulatorClient, tmp_path: Path
) -> None:
    files = make_context(tmp_path)

    run = await run_to_end(emulator, plan_dockerfile(tmp_path / "Dockerfile"))

    assert run.state.state == "done"
    [template] = emulator.templates()
    snapshot = snapshot_files(emulator, template)
    assert {f"context/{rel}": content for rel, content in files.items()}.items() <= (
        snapshot.items()
    )


@pytest.mark.usefixtures("small_parts")
async def test_parts_are_sent_in_turn_then_extracted_and_removed(
    emulator: EmulatorClient, tmp_path: Path
) -> None:
    make_context(tmp_path)

    run = await run_to_end(emulator, plan_dockerfile(tmp_path / "Dockerfile"))

    requests = emulator.requests()
    sent = [r["query"]["path"] for r in requests if r["method"] == "PUT"]
    parts = [path for path in sent if "kiln-context-" in path]
    assert len(parts) >= 3
    assert parts == [upload_module.PART_ARCHIVE_PATH.format(index=i) for i in range(len(parts))]
    # Each part is extracted and removed by a one-shot root process of its own.
    scripts = [" ".join(p["args"]) for p in emulator.processes() if p["command"] == "/bin/sh"]
    removed = [path for path in parts if any(f"rm -f {path}" in script for script in scripts)]
    assert removed == parts
    assert run.state.context_digest is not None
    statuses = run.messages("status")
    assert statuses.count("Build context extracted; removed remote archive") == 1
    assert any(s.startswith(f"Build context: {FILES + 1} files") for s in statuses)


@pytest.mark.usefixtures("small_parts")
async def test_a_failed_part_fails_the_attempt_and_the_retry_sends_every_part(
    emulator: EmulatorClient, tmp_path: Path
) -> None:
    files = make_context(tmp_path)
    # The second part's PUT fails once, while the first part is being extracted.
    emulator.add_fault({"status": 502}, method="PUT", path="/api/v1/files", times=1, after=1)

    run = await run_to_end(emulator, plan_dockerfile(tmp_path / "Dockerfile"))

    assert run.state.state == "done", (run.state.error, run.transitions())
    assert run.state.attempts_in("upload") == 2
    [template] = emulator.templates()
    snapshot = snapshot_files(emulator, template)
    assert all(snapshot[f"context/{rel}"] == content for rel, content in files.items())
    assert emulator.live_sandboxes() == []
