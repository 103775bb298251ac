"""The build cache: an unchanged build returns the template an earlier one registered, with one
request and no sandbox; any input of the build key changed, a template it relied on deleted or
re-pointed, or ``cache=False``, and it builds."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import kiln
from kiln.builds import Worker, WorkerConfig, build_key, start_plan, submit
from kiln.machine import BuildOptions
from kiln.plan import BuildPlan, plan_dockerfile, plan_import
from kiln.store import Store, open_store
from kiln.testing import TEST_TOKEN, EmulatorClient
from support.events import check_event
from support.paths import HELLO

PARENT_DOCKERFILE = "FROM python:3.12-slim\nRUN echo parent\n"
CHILD_DOCKERFILE = "FROM base\nRUN echo child\n"
ARGS_DOCKERFILE = "ARG GREETING=hi\nFROM python:3.12-slim AS first\nRUN echo $GREETING\n"
TARGETS_DOCKERFILE = (
    "FROM python:3.12-slim AS first\nRUN echo one\nFROM python:3.12-slim AS second\nRUN echo two\n"
)
DIGEST = "sha256:" + "0" * 64
WORKER_DEADLINE_S = 30.0
POLL_S = 0.01
LOOKUP_DELAY_MS = 2000


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = open_store(f"sqlite:///{tmp_path / 'builds.db'}")
    yield opened
    await opened.close()


@pytest.fixture
def hello(tmp_path: Path) -> Path:
    """A copy of examples/hello that a test may change."""
    copy = tmp_path / "hello"
    shutil.copytree(HELLO.parent, copy)
    return copy


async def build(
    plan: BuildPlan, store: Store, emulator: EmulatorClient, **options: Any
) -> kiln.Build:
    handle = start_plan(plan, store=store, api_url=emulator.url, api_key=TEST_TOKEN, **options)
    await handle.result()
    return handle


def hello_plan(directory: Path, **planning: Any) -> BuildPlan:
    return plan_dockerfile(directory / "Dockerfile", **planning)


def text_plan(directory: Path, text: str, **planning: Any) -> BuildPlan:
    return plan_dockerfile(text=text, context=directory, **planning)


async def test_an_unchanged_build_makes_one_request_and_no_sandbox(
    sqlite_store: Store, emulator: EmulatorClient, hello: Path
) -> None:
    first = await build(hello_plan(hello), sqlite_store, emulator)
    requests_before = len(emulator.requests())
    sandboxes_before = len(emulator.sandboxes())
    events: list[kiln.Event] = []

    second = await build(hello_plan(hello), sqlite_store, emulator, on_event=events.append)

    sent = [(r["method"], r["path"]) for r in emulator.requests()[requests_before:]]
    assert sent == [("GET", "/platform/v1/sandbox-templates/by-name/hello")]
    assert len(emulator.sandboxes()) == sandboxes_before
    assert await second.result() == await first.result()
    assert second.state.state == "done" and second.state.cached_from == first.state.id
    cached = [e for e in events if isinstance(e, kiln.CachedEvent)]
    assert cached == [
        kiln.CachedEvent(first.state.cache.key, first.state.result["id"], first.state.id)  # type: ignore[union-attr,index]
    ]
    assert cached[0].to_dict()["cached"] is True
    for event in events:
        check_event(event.to_dict())
    record = await sqlite_store.get(second.state.id)
    assert record is not None and record.state == "done" and record.final
    kinds = [event.kind for event in await sqlite_store.events(second.state.id)]
    assert kinds == ["status", "cached", "transition"]


def sandboxes(emulator: EmulatorClient) -> int:
    return len(emulator.sandboxes())


async def rebuilds(store: Store, emulator: EmulatorClient, plan: BuildPlan, **options: Any) -> bool:
    """Whether building ``plan`` now makes a builder sandbox (is no cache hit)."""
    before = sandboxes(emulator)
    handle = await build(plan, store, emulator, **options)
    built = sandboxes(emulator) > before
    assert built == (handle.state.cached_from is None)
    return built


async def test_the_same_build_again_is_a_hit(
    sqlite_store: Store, emulator: EmulatorClient, hello: Path
) -> None:
    # The control for the tests below: each changes one input, and only that makes it build.
    await build(hello_plan(hello), sqlite_store, emulator)
    assert not await rebuilds(sqlite_store, emulator, hello_plan(hello))


async def test_a_changed_dockerfile_builds(
    sqlite_store: Store, emulator: EmulatorClient, hello: Path
) -> None:
    await build(hello_plan(hello), sqlite_store, emulator)
    # Unchanged, it is a hit: what follows changes only the one input.
    assert not await rebuilds(sqlite_store, emulator, hello_plan(hello))
    dockerfile = hello / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "RUN echo changed\n")
    assert await rebuilds(sqlite_store, emulator, hello_plan(hello))


async def test_a_changed_context_file_builds(
    sqlite_store: Store, emulator: EmulatorClient, hello: Path
) -> None:
    await build(hello_plan(hello), sqlite_store, emulator)
    # Unchanged, it is a hit: what follows changes only the one input.
    assert not await rebuilds(sqlite_store, emulator, hello_plan(hello))
    (hello / "hello.py").write_text('print("changed")\n')
    assert await rebuilds(sqlite_store, emulator, hello_plan(hello))


async def test_a_changed_build_arg_builds(
    sqlite_store: Store, emulator: EmulatorClient, hello: Path
) -> None:
    await build(
        text_plan(hello, ARGS_DOCKERFILE, build_args={"GREETING": "one"}), sqlite_store, emulator
    )
    assert not await rebuilds(
        sqlite_store, emulator, text_plan(hello, ARGS_DOCKERFILE, build_args={"GREETING": "one"})
    )
    assert await rebuilds(
        sqlite_store, emulator, text_plan(hello, ARGS_DOCKERFILE, build_args={"GREETING": "two"})
    )


async def test_another_target_builds(
    sqlite_store: Store, emulator: EmulatorClient, hello: Path
) -> None:
    plan = text_plan(hello, TARGETS_DOCKERFILE, target="first", name="staged")
    await build(plan, sqlite_store, emulator)
    assert not await rebuilds(sqlite_store, emulator, plan)
    other = text_plan(hello, TARGETS_DOCKERFILE, target="second", name="staged")
    assert await rebuilds(sqlite_store, emulator, other)


@pytest.mark.parametrize(
    "options", [{"disk_mb": 20480}, {"docker_compat": True}, {"public": True}], ids=str
)
async def test_a_changed_option_of_the_result_builds(
    sqlite_store: Store, emulator: EmulatorClient, hello: Path, options: dict[str, Any]
) -> None:
    await build(hello_plan(hello), sqlite_store, emulator)
    # Unchanged, it is a hit: what follows changes only the one input.
    assert not await rebuilds(sqlite_store, emulator, hello_plan(hello))
    assert await rebuilds(sqlite_store, emulator, hello_plan(hello), **options)


async def test_options_of_the_builder_alone_do_not_change_the_key(
    sqlite_store: Store, emulator: EmulatorClient, hello: Path
) -> None:
    await build(hello_plan(hello), sqlite_store, emulator)
    assert not await rebuilds(
        sqlite_store, emulator, hello_plan(hello), cpus=4.0, memory_mb=8192, deadline=600.0
    )


async def test_cache_false_always_builds(
    sqlite_store: Store, emulator: EmulatorClient, hello: Path
) -> None:
    await build(hello_plan(hello), sqlite_store, emulator)
    # Unchanged, it is a hit: what follows changes only the one input.
    assert not await rebuilds(sqlite_store, emulator, hello_plan(hello))
    assert await rebuilds(sqlite_store, emulator, hello_plan(hello), cache=False)
    # ... and what it built is a hit for the next build.
    assert not await rebuilds(sqlite_store, emulator, hello_plan(hello))


async def test_a_template_deleted_meanwhile_builds(
    sqlite_store: Store, emulator: EmulatorClient, hello: Path
) -> None:
    await build(hello_plan(hello), sqlite_store, emulator)
    # Unchanged, it is a hit: what follows changes only the one input.
    assert not await rebuilds(sqlite_store, emulator, hello_plan(hello))
    emulator.delete_template("hello")
    assert await rebuilds(sqlite_store, emulator, hello_plan(hello))


async def test_a_name_re_pointed_by_another_build_builds(
    sqlite_store: Store, emulator: EmulatorClient, hello: Path
) -> None:
    await build(hello_plan(hello), sqlite_store, emulator)
    # Unchanged, it is a hit: what follows changes only the one input.
    assert not await rebuilds(sqlite_store, emulator, hello_plan(hello))
    # Another Dockerfile registered under the same name: "hello" now names its template.
    await build(text_plan(hello, PARENT_DOCKERFILE, name="hello"), sqlite_store, emulator)
    assert await rebuilds(sqlite_store, emulator, hello_plan(hello))


async def test_a_parent_template_rebuilt_under_its_name_builds(
    sqlite_store: Store, emulator: EmulatorClient, hello: Path
) -> None:
    parent = text_plan(hello, PARENT_DOCKERFILE, name="base")
    child = text_plan(hello, CHILD_DOCKERFILE, name="child")
    await build(parent, sqlite_store, emulator)
    await build(child, sqlite_store, emulator)
    requests_before = len(emulator.requests())
    assert not await rebuilds(sqlite_store, emulator, child)
    # Its own template and the one it builds on, one lookup each.
    assert len(emulator.requests()) - requests_before == 2
    # The parent's name now resolves to another id: the child is built on that one.
    await build(parent, sqlite_store, emulator, cache=False)
    assert await rebuilds(sqlite_store, emulator, child)


async def test_another_place_is_another_cache(
    sqlite_store: Store, emulator: EmulatorClient, hello: Path
) -> None:
    await build(hello_plan(hello), sqlite_store, emulator)
    assert not await rebuilds(sqlite_store, emulator, hello_plan(hello))
    before = sandboxes(emulator)
    # The same API, in another PAT scope: the earlier build is no candidate.
    handle = start_plan(
        hello_plan(hello),
        store=sqlite_store,
        api_url=emulator.url,
        pat=TEST_TOKEN,
        organization_id="org-2",
        project_id="proj-2",
    )
    await handle.result()
    assert sandboxes(emulator) > before


async def run_worker_until_ended(store: Store, *build_ids: str) -> list[dict[str, Any]]:
    """Run a worker on ``store`` until every build named has ended; their persisted states."""
    worker = Worker(store, WorkerConfig(poll_s=0.01, idle_poll_max_s=0.05), api_key=TEST_TOKEN)
    running = asyncio.create_task(worker.run())

    async def ended(build_id: str) -> bool:
        record = await store.get(build_id)
        return record is not None and record.final

    try:
        async with asyncio.timeout(WORKER_DEADLINE_S):
            while not all([await ended(build_id) for build_id in build_ids]):
                await asyncio.sleep(POLL_S)
    finally:
        worker.drain()
        await running
    records = [await store.get(build_id) for build_id in build_ids]
    return [record.data for record in records if record is not None]


async def test_a_queued_build_whose_key_was_built_meanwhile_ends_at_once(
    sqlite_store: Store, emulator: EmulatorClient, hello: Path
) -> None:
    first = await submit(hello / "Dockerfile", store=sqlite_store, api_url=emulator.url)
    second = await submit(hello / "Dockerfile", store=sqlite_store, api_url=emulator.url)
    states = await run_worker_until_ended(sqlite_store, first, second)
    assert sandboxes(emulator) == 1
    assert [data["state"] for data in states] == ["done", "done"]
    assert [data["cached_from"] for data in states] == [None, first]


async def test_a_queued_build_submitted_with_cache_false_builds(
    sqlite_store: Store, emulator: EmulatorClient, hello: Path
) -> None:
    await build(hello_plan(hello), sqlite_store, emulator)
    queued = await submit(hello / "Dockerfile", store=sqlite_store, api_url=emulator.url)
    unqueued = await submit(
        hello / "Dockerfile", store=sqlite_store, api_url=emulator.url, cache=False
    )
    states = await run_worker_until_ended(sqlite_store, queued, unqueued)
    assert [data["cached_from"] is None for data in states] == [False, True]
    assert sandboxes(emulator) == 2


async def test_an_unchanged_import_is_a_hit(sqlite_store: Store, emulator: EmulatorClient) -> None:
    first = await build(plan_import("python:3.12-slim"), sqlite_store, emulator)
    assert not await rebuilds(sqlite_store, emulator, plan_import("python:3.12-slim"))
    assert await rebuilds(sqlite_store, emulator, plan_import("python:3.13-slim", name="python"))
    assert first.state.cache is not None and first.state.cache.key.startswith("sha256:")


def key_of(plan: BuildPlan, **options: Any) -> str:
    return build_key(plan, BuildOptions(**options), DIGEST)


def test_the_key_covers_each_input(hello: Path) -> None:
    plan = text_plan(hello, ARGS_DOCKERFILE, build_args={"GREETING": "one"})
    key = key_of(plan)
    assert key == key_of(text_plan(hello, ARGS_DOCKERFILE, build_args={"GREETING": "one"}))
    changed = [
        key_of(text_plan(hello, ARGS_DOCKERFILE + "RUN true\n", build_args={"GREETING": "one"})),
        key_of(text_plan(hello, ARGS_DOCKERFILE, build_args={"GREETING": "two"})),
        key_of(text_plan(hello, ARGS_DOCKERFILE, build_args={"GREETING": "one"}, name="x")),
        build_key(plan, BuildOptions(), "sha256:" + "1" * 64),
        key_of(plan, disk_mb=20480),
        key_of(plan, docker_compat=True),
        key_of(plan, public=True),
    ]
    assert key not in changed and len(set(changed)) == len(changed)
    assert key_of(plan, cpus=4.0, builder_disk_mb=40960, deadline_s=5.0, cache=False) == key


async def test_a_build_cancelled_while_it_looks_the_cache_up_ends_cancelled(
    sqlite_store: Store, emulator: EmulatorClient, hello: Path
) -> None:
    await build(hello_plan(hello), sqlite_store, emulator)
    # The check's one request answers late: the cancel lands while it is in flight.
    emulator.add_fault({"delay_ms": LOOKUP_DELAY_MS}, method="GET", path="by-name/hello")
    before = sandboxes(emulator)
    handle = start_plan(
        hello_plan(hello), store=sqlite_store, api_url=emulator.url, api_key=TEST_TOKEN
    )
    async with asyncio.timeout(WORKER_DEADLINE_S):
        while handle.state.cache is None:
            await asyncio.sleep(POLL_S)
    handle.cancel()
    with pytest.raises(kiln.BuildCancelled):
        await handle.result()
    assert handle.state.state == "cancelled" and handle.state.cached_from is None
    assert sandboxes(emulator) == before
