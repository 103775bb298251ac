"""Emulator level: generated fault schedules against the in-process emulator.

The build ends ``done`` exactly when the faults fit the retry budgets, else ``failed`` in the
phase the schedule predicts, with an error naming its sandbox and build; no sandbox is left
running, the builder is started at most once, complete is served at most once, and the token
appears nowhere. Without faults, a realistic Dockerfile the planner accepts builds and registers
its planned name.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, event, example, given, settings

from kiln.emulator import SignMode
from kiln.errors import PlanError
from kiln.plan import plan_dockerfile
from kiln.store import MemoryStore
from kiln.testing import (
    TARGETS,
    EmulatorClient,
    FaultSchedule,
    RequestFault,
    run_build,
    without_backoff,
)
from kiln.testing.strategies import dockerfiles, fault_schedules
from properties.levels import examples
from properties.support import check_no_leftovers, check_no_secret, check_outcome, failed_in
from support.paths import HELLO

pytestmark = pytest.mark.slow

SPEC = without_backoff()
BY_NAME = {target.name: target for target in TARGETS}


def flaky(target: str, times: int, after: int = 0, sign_mode: SignMode = "legacy") -> FaultSchedule:
    fault = RequestFault(BY_NAME[target], {"status": 502}, times=times, after=after)
    return FaultSchedule(faults=(fault,), sign_mode=sign_mode)


# The emulator is reset at the start of every example instead of per test.
EXAMPLE_SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}


@settings(max_examples=examples("emulator"), **EXAMPLE_SETTINGS)
@given(schedule=fault_schedules(SPEC))
# The budget's edges, where an off-by-one in the prediction or in the driver shows (found by
# breaking the prediction on purpose during development).
@example(schedule=flaky("template_lookup", times=4))
@example(schedule=flaky("template_lookup", times=5))
@example(schedule=flaky("put_file", times=3, after=1))
@example(schedule=flaky("complete", times=4))
@example(schedule=flaky("delete_sandbox", times=5))
@example(schedule=FaultSchedule(sandbox_lost_at=3))
def test_a_build_under_faults_ends_as_its_schedule_predicts(
    kiln_emulator: EmulatorClient, schedule: FaultSchedule
) -> None:
    check_schedule(kiln_emulator, schedule)


@settings(max_examples=examples("emulator_signing"), **EXAMPLE_SETTINGS)
@given(schedule=fault_schedules(SPEC, sign_mode="new"))
@example(schedule=flaky("sign", times=5, sign_mode="new"))
def test_a_signed_upload_under_faults_ends_as_its_schedule_predicts(
    signing_emulator: EmulatorClient, schedule: FaultSchedule
) -> None:
    check_schedule(signing_emulator, schedule)


@settings(max_examples=examples("emulator_cloud"), **EXAMPLE_SETTINGS)
@given(schedule=fault_schedules(SPEC))
@example(schedule=flaky("follow", times=9))
@example(schedule=FaultSchedule(sandbox_lost_at=3))
def test_a_build_under_faults_in_the_cloud_ends_as_its_schedule_predicts(
    cloud_emulator: EmulatorClient, schedule: FaultSchedule
) -> None:
    # The same predictions hold under the cloud profile: its pending window, cut streams and
    # refused chunked uploads cost no attempt the schedule does not count.
    check_schedule(cloud_emulator, schedule)


def check_schedule(emulator: EmulatorClient, schedule: FaultSchedule) -> None:
    emulator.reset()
    schedule.install(emulator)
    store = MemoryStore()
    run = asyncio.run(run_build(emulator, HELLO, store=store, spec=SPEC))
    event(f"{run.outcome} (failed in {failed_in(SPEC, run)})")
    check_outcome(SPEC, schedule, run)
    check_no_leftovers(SPEC, schedule, emulator)
    asyncio.run(check_no_secret(run, store))


@settings(max_examples=examples("dockerfiles"), **EXAMPLE_SETTINGS)
@given(text=dockerfiles())
# Parses, but names no base image once its ARG is expanded: refused locally, before any request.
@example(text="ARG PY=\nFROM ${PY}\n")
def test_a_realistic_dockerfile_builds_and_registers_its_planned_name(
    kiln_emulator: EmulatorClient, tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    kiln_emulator.reset()
    dockerfile = tmp_path_factory.mktemp("context") / "Dockerfile"
    dockerfile.write_text(text)
    try:
        plan = plan_dockerfile(dockerfile)
    except PlanError:
        event("refused by the planner")
        assert kiln_emulator.requests() == []
        return
    run = asyncio.run(run_build(kiln_emulator, plan, spec=SPEC))
    assert run.outcome == "done", run.state.error
    assert [t["name"] for t in kiln_emulator.templates()] == [plan.name]
    assert kiln_emulator.live_sandboxes() == []
