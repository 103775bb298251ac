"""finish_despite_cancel: work that must not be cut short lands before a cancel goes on."""

from __future__ import annotations

import asyncio
import gc

import pytest

from kiln._tasks import finish_despite_cancel


async def test_the_result_comes_back_when_nothing_cancels() -> None:
    async def work() -> int:
        await asyncio.sleep(0)
        return 7

    assert await finish_despite_cancel(work()) == 7


async def test_a_cancel_waits_for_the_work_then_goes_on() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    landed: list[str] = []

    async def write() -> None:
        started.set()
        await release.wait()
        landed.append("written")

    caller = asyncio.create_task(finish_despite_cancel(write()))
    await started.wait()
    caller.cancel()
    await asyncio.sleep(0)
    assert not caller.done(), "the cancel must wait for the write"
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert landed == ["written"]


async def test_after_a_cancel_the_work_s_outcome_is_on_its_task() -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def call() -> str:
        started.set()
        await release.wait()
        return "registered"

    task = asyncio.ensure_future(call())
    caller = asyncio.create_task(finish_despite_cancel(task))
    await started.wait()
    caller.cancel()
    await asyncio.sleep(0)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert task.result() == "registered"


async def test_a_failure_after_a_cancel_is_retrieved_and_the_cancel_wins() -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def write() -> None:
        started.set()
        await release.wait()
        raise OSError("disk full")

    reports: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: reports.append(context))
    caller = asyncio.create_task(finish_despite_cancel(write()))
    await started.wait()
    caller.cancel()
    await asyncio.sleep(0)
    release.set()
    cancelled = False
    try:
        await caller
    except asyncio.CancelledError:
        cancelled = True  # the exception's frames would keep the write's task alive
    del caller
    gc.collect()
    assert cancelled
    # No "exception was never retrieved" report when the task is collected.
    assert reports == []
