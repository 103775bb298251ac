"""Whole builds against the in-process emulator: the happy paths and what they cost."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.machine import BuildOptions, BuildState
from kiln.plan import plan_dockerfile
from kiln.testing import EmulatorClient
from support.machine import EmulatorPool, import_plan, run_to_end
from support.paths import MULTISTAGE

# The official client makes 34 requests for examples/hello (docs/protocol.md#the-official-client);
# kiln's budget: lookup, prepare, create, the archive and spec.json PUT side by side, the builder's
# one process started and followed (its exit status and metadata arrive on the stream), complete,
# delete (issue 14).
HELLO_REQUEST_BUDGET = 9

HAPPY_PATH = [
    "prepare",
    "create_sandbox",
    "wait_running",
    "sign",
    "upload",
    "run_builder",
    "read_metadata",
    "complete",
    "cleanup",
    "done",
]


@pytest.mark.cloud
async def test_hello_builds_and_registers_its_template(emulator: EmulatorClient) -> None:
    run = await run_to_end(emulator)
    assert run.state.state == "done"
    # The cloud's pending window costs wait_running retries, and nothing else does.
    assert [d for _, t, d in run.transitions() if t != "retry"] == HAPPY_PATH
    assert {s for s, t, _ in run.transitions() if t == "retry"} <= {"wait_running"}
    assert run.state.result is not None
    templates = emulator.templates()
    assert [t["name"] for t in templates] == ["hello"]
    assert run.state.result["id"] == templates[0]["id"]


async def test_hello_costs_at_most_nine_requests(emulator: EmulatorClient) -> None:
    await run_to_end(emulator)
    requests = emulator.requests()
    assert len(requests) <= HELLO_REQUEST_BUDGET, [(r["method"], r["path"]) for r in requests]
    assert all(r["status"] < 400 or r["status"] == 404 for r in requests)


async def test_hello_status_lines_follow_the_reference_wording(emulator: EmulatorClient) -> None:
    run = await run_to_end(emulator)
    statuses = run.messages("status")
    expected_prefixes = [
        "Selected image name: hello",
        "Preparing rootfs build...",
        "Build mode: RootfsBase",
        "Builder resources: 2.00 CPU",
        "Target rootfs size: 10.0 GiB",
        "Creating rootfs builder sandbox from ",
        "Rootfs builder sandbox ",
        "Uploading build context...",
        "Creating build context archive from ",
        "Uploading build context archive: 0%",
        "Uploading build context archive: 100%",
        "Build context: ",
        "Untarring build context archive in builder sandbox...",
        "Build context extracted; removed remote archive",
        "Running offline rootfs builder...",
        "Completing image registration...",
        "Image 'hello' registered (tmpl-",
    ]
    positions = [
        next(i for i, s in enumerate(statuses) if s.startswith(prefix))
        for prefix in expected_prefixes
    ]
    assert positions == sorted(positions)
    assert run.messages("build_log"), "the builder's log lines are delivered"


@pytest.mark.cloud
async def test_multistage_builds(emulator: EmulatorClient) -> None:
    run = await run_to_end(emulator, plan_dockerfile(MULTISTAGE))
    assert run.state.state == "done"


@pytest.mark.cloud
async def test_import_skips_the_context(emulator: EmulatorClient) -> None:
    run = await run_to_end(emulator, import_plan())
    assert run.state.state == "done"
    paths = [r["query"].get("path", "") for r in emulator.requests()]
    assert not any(p.endswith("context.tar.gz") for p in paths)
    assert run.state.context_digest is None


@pytest.mark.cloud
async def test_a_build_from_a_registered_name_is_a_diff(
    emulator: EmulatorClient, tmp_path: Path
) -> None:
    await run_to_end(emulator)
    child = tmp_path / "child" / "Dockerfile"
    child.parent.mkdir()
    child.write_text("FROM hello\nRUN echo child\n", encoding="utf-8")
    run = await run_to_end(emulator, plan_dockerfile(child))
    assert run.state.state == "done"
    assert "Build mode: RootfsDiff" in run.messages("status")
    assert run.state.result is not None
    assert run.state.result["rootfsNodeKind"] == "diff"


async def test_the_signed_path_builds(emulator_pool: EmulatorPool) -> None:
    with emulator_pool.running(sign_mode="new") as admin:
        run = await run_to_end(admin)
        assert run.state.state == "done"
        assert run.state.signed_uri is not None
        signs = [r for r in admin.requests() if r["path"] == "/api/v1/blob/sign"]
        assert signs


async def test_a_sandbox_that_starts_slowly_is_polled_until_running(
    emulator_pool: EmulatorPool,
) -> None:
    with emulator_pool.running(start_delay_ms=150) as admin:
        run = await run_to_end(admin)
        assert run.state.state == "done"
        polls = [r for r in admin.requests() if r["method"] == "GET" and "/sandboxes/" in r["path"]]
        assert 1 <= len(polls) <= 8


async def test_the_store_hook_sees_every_transition_before_the_next_handler(
    emulator: EmulatorClient,
) -> None:
    seen: list[str] = []

    async def persist(state: BuildState) -> None:
        seen.append(state.state)
        # Every persisted snapshot must survive the trip through JSON.
        assert BuildState.from_json(state.to_json()).state == state.state

    run = await run_to_end(emulator, persist=persist)
    # Handlers also checkpoint mid-state (before the sandbox is requested, once it is created,
    # once the builder started): the same state again.
    transitions = [name for i, name in enumerate(seen) if i == 0 or seen[i - 1] != name]
    assert transitions == ["resolve_scope", *HAPPY_PATH]
    assert seen.count("create_sandbox") == 3
    assert seen.count("run_builder") == 2
    assert run.state.outcome == "done"


async def test_plan_and_option_warnings_come_first(emulator: EmulatorClient) -> None:
    options = BuildOptions(api_url=emulator.url, docker_compat=True)
    run = await run_to_end(emulator, plan_dockerfile(MULTISTAGE), options=options)
    assert run.state.state == "done"
    warnings = run.messages("warning")
    assert any("'EXPOSE'" in w for w in warnings), warnings
    assert any("Docker compatibility mode is enabled" in w for w in warnings)
