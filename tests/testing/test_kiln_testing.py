"""kiln.testing's public surface: the emulator client, run_build, the fixtures and strategies."""

from __future__ import annotations

import io
import itertools
import tarfile
from collections import Counter

import pytest
import structlog
from hypothesis import given

from kiln.errors import UsageError
from kiln.machine import BuildState, load_machine_spec
from kiln.store import Store
from kiln.testing import (
    TARGETS,
    EmulatorClient,
    FaultSchedule,
    RequestFault,
    run_build,
    without_backoff,
)
from kiln.testing.strategies import Step, fault_schedules, transition_sequences
from support.paths import HELLO

SPEC = load_machine_spec()
BY_NAME = {target.name: target for target in TARGETS}


def test_a_fault_is_listed_with_its_counters_and_cleared(kiln_emulator: EmulatorClient) -> None:
    added = kiln_emulator.add_fault({"status": 503}, method="GET", path="^/x$", times=2)
    assert added["id"] and added["times"] == 2
    assert [(f["id"], f["seen"], f["fired"]) for f in kiln_emulator.faults()] == [
        (added["id"], 0, 0)
    ]
    kiln_emulator.clear_faults()
    assert kiln_emulator.faults() == []


def test_a_bad_fault_is_a_usage_error_naming_the_problem(kiln_emulator: EmulatorClient) -> None:
    with pytest.raises(UsageError, match="action") as caught:
        kiln_emulator.add_fault({"explode": True})
    assert caught.value.hint


def test_the_fixture_hands_out_a_reset_emulator(kiln_emulator: EmulatorClient) -> None:
    # The session's emulator has served the tests before this one; none of it shows.
    assert kiln_emulator.faults() == []
    assert kiln_emulator.requests() == []
    assert kiln_emulator.sandboxes() == []
    assert kiln_emulator.templates() == []
    assert kiln_emulator.image_builds() == []


async def test_a_registered_snapshot_is_read_back_whole(kiln_emulator: EmulatorClient) -> None:
    run = await run_build(kiln_emulator, HELLO)
    assert run.outcome == "done", run.error
    [template] = kiln_emulator.templates()
    snapshot = kiln_emulator.blob(template["snapshotUri"])
    assert len(snapshot) == template["snapshotSizeBytes"]
    with tarfile.open(fileobj=io.BytesIO(snapshot)) as archive:
        assert "spec.json" in archive.getnames()


def test_a_missing_blob_is_a_usage_error_naming_it(kiln_emulator: EmulatorClient) -> None:
    missing = "s3://kiln-emulator/snapshots/nothing-here.tlsnap"
    with pytest.raises(UsageError, match="nothing-here"):
        kiln_emulator.blob(missing)


async def test_run_build_reports_state_events_logs_and_requests(
    kiln_emulator: EmulatorClient, kiln_store: Store
) -> None:
    run = await run_build(kiln_emulator, HELLO, store=kiln_store)
    assert run.outcome == "done" and run.error is None
    assert run.transitions()[0] == ("resolve_scope", "succeed", "prepare")
    assert run.transitions()[-1] == ("cleanup", "succeed", "done")
    assert any("transition" in line for line in run.logs)
    assert Counter(r["method"] for r in run.requests if r["path"].endswith("/complete")) == {
        "POST": 1
    }
    record = await kiln_store.get(run.state.id)
    assert record is not None and record.final and record.state == "done"
    assert BuildState.from_dict(record.data).result == run.state.result


async def test_run_build_keeps_the_logs_of_an_application_that_configured_structlog(
    kiln_emulator: EmulatorClient,
) -> None:
    printed = io.StringIO()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(printed))
    run = await run_build(kiln_emulator, HELLO)
    assert any('"transition"' in line for line in run.logs)
    assert structlog.is_configured()


async def test_run_build_under_a_schedule_fails_where_predicted(
    kiln_emulator: EmulatorClient,
) -> None:
    schedule = FaultSchedule(faults=(RequestFault(BY_NAME["complete"], {"status": 409}, 1),))
    schedule.install(kiln_emulator)
    run = await run_build(kiln_emulator, HELLO)
    assert schedule.failing_phase() == "complete"
    assert run.outcome == "failed"
    assert ("complete", "fail", "cleanup") in run.transitions()
    assert kiln_emulator.live_sandboxes() == []


def test_a_schedule_predicts_from_the_budgets() -> None:
    budget = SPEC.states["create_sandbox"].attempts

    def flaky(times: int) -> FaultSchedule:
        fault = RequestFault(BY_NAME["create_sandbox"], {"status": 503}, times)
        return FaultSchedule(faults=(fault,))

    assert flaky(budget - 1).expected_outcome() == "done"
    assert flaky(budget).expected_outcome() == "failed"
    assert FaultSchedule(builder={"oom_kill": True}).failing_phase() == "run_builder"
    slow = RequestFault(BY_NAME["prepare"], {"delay_ms": 5}, 100)
    assert FaultSchedule(faults=(slow,)).expected_outcome() == "done"


def test_a_schedule_refuses_a_request_its_platform_never_makes() -> None:
    sign = RequestFault(BY_NAME["sign"], {"status": 503}, 1)
    with pytest.raises(UsageError, match="'legacy' platform makes no 'sign' request"):
        FaultSchedule(faults=(sign,))
    assert FaultSchedule(faults=(sign,), sign_mode="new").expected_outcome() == "done"


def test_a_schedule_refuses_two_faults_on_one_kind_of_request() -> None:
    # Found by the deep profile: a rule meant for a later request of a kind counted the earlier
    # requests' retries as its own matches and fired in the wrong attempt.
    spec_put = RequestFault(BY_NAME["put_file"], {"status": 400}, 1, after=1)
    archive_put = RequestFault(BY_NAME["put_file"], {"status": 502}, 1)
    with pytest.raises(UsageError, match=r"one fault per (phase|request kind)"):
        FaultSchedule(faults=(spec_put, archive_put))


def test_side_by_side_requests_fail_one_attempt_per_pair_of_firings() -> None:
    # upload sends its two PUTs side by side, each whatever the other's answer: firings 1 and 2
    # fall in its first attempt, 3 and 4 in its second.
    budget = SPEC.states["upload"].attempts
    within = RequestFault(BY_NAME["put_file"], {"status": 502}, 2 * budget - 2)
    beyond = RequestFault(BY_NAME["put_file"], {"status": 502}, 2 * budget - 1)
    shifted = RequestFault(BY_NAME["put_file"], {"status": 502}, 2 * budget - 3, after=1)
    assert FaultSchedule(faults=(within,)).expected_outcome() == "done"
    assert FaultSchedule(faults=(beyond,)).expected_outcome() == "failed"
    assert FaultSchedule(faults=(shifted,)).expected_outcome() == "done"


def test_a_delete_failing_past_cleanup_budget_leaks_but_does_not_fail() -> None:
    fault = RequestFault(
        BY_NAME["delete_sandbox"], {"status": 500}, SPEC.states["cleanup"].attempts
    )
    schedule = FaultSchedule(faults=(fault,))
    assert schedule.leaks_sandbox() and schedule.expected_outcome() == "done"


@given(path=transition_sequences())
def test_a_transition_sequence_is_a_path_within_the_budgets(path: tuple[Step, ...]) -> None:
    assert path[0].source == SPEC.initial and path[-1].dest in SPEC.finals
    for before, after in itertools.pairwise(path):
        assert before.dest == after.source
    for step in path:
        assert SPEC.states[step.source].on[step.trigger] == step.dest
    runs = Counter(step.source for step in path)
    assert all(count <= SPEC.states[name].attempts for name, count in runs.items())


@given(schedule=fault_schedules(max_failures=1))
def test_capped_schedules_fail_each_request_once_at_most(schedule: FaultSchedule) -> None:
    assert all(fault.times == 1 for fault in schedule.faults)
    assert schedule.sandbox_lost_at is None
    assert len({fault.phase for fault in schedule.faults}) == len(schedule.faults)


def test_without_backoff_keeps_the_budgets_and_waits_nothing() -> None:
    fast = without_backoff()
    assert {n: s.attempts for n, s in fast.states.items()} == {
        n: s.attempts for n, s in SPEC.states.items()
    }
    # States with a backoff of their own (wait_running's second) wait nothing either.
    assert all(fast.backoff_of(name).delay(3) == 0 for name in fast.states)
