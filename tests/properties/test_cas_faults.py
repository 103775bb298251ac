"""The CAS machine (states/cas.toml) under generated fault schedules on the Image Service's
requests: whatever the service answers with transient errors, a build makes at most one remote
build, ends ``done`` exactly when every fault fits its state's retry budget, and never leaves a
remote build unfinished behind a ``failed`` one (``release`` cancels it)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln.api import TERMINAL_STATUSES
from kiln.machine import CAS_MACHINE, BuildOptions, BuildState, CasProgress, load_machine_spec
from kiln.plan import plan_dockerfile
from kiln.testing import EmulatorClient
from support.machine import FAST_BACKOFF, EmulatorPool, run_to_end
from support.paths import HELLO

pytestmark = pytest.mark.slow

SPEC = load_machine_spec(name=CAS_MACHINE).with_backoff(FAST_BACKOFF)
BUILDS = r"^/images/v4/builds$"
# Each request of the path, the state that sends it, and the regex of its path.
REQUESTS = {
    "admission": ("create_build", "POST", BUILDS),
    "upload": ("upload_context", "PUT", r"^/image-context-uploads/"),
    "seal": ("seal_context", "POST", r"/context/seal$"),
    "poll": ("wait_build", "GET", r"^/images/v4/builds/build_"),
}
TRANSIENT = (502, 503)


@attrs.frozen
class Fault:
    request: str
    status: int
    times: int


def schedules() -> st.SearchStrategy[list[Fault]]:
    fault = st.builds(
        Fault,
        st.sampled_from(sorted(REQUESTS)),
        st.sampled_from(TRANSIENT),
        # Up to one past the largest budget, so that both outcomes come up.
        st.integers(1, max(SPEC.states[state].attempts for state, _, _ in REQUESTS.values()) + 1),
    )
    return st.lists(fault, max_size=3, unique_by=lambda f: f.request)


def fits(schedule: list[Fault]) -> bool:
    """Whether every fault is outlasted by its state's attempts (each poll that answers starts
    wait_build's count again, so only consecutive failures count there)."""
    return all(f.times < SPEC.states[REQUESTS[f.request][0]].attempts for f in schedule)


@pytest.fixture(scope="module")
def cas_emulator(emulator_pool: EmulatorPool) -> Iterator[EmulatorClient]:
    with EmulatorClient(emulator_pool.url()) as client:
        yield client


@settings(
    max_examples=max(5, settings.default.max_examples // 4),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(schedule=schedules())
def test_transient_faults_make_one_remote_build_and_leave_none_running(
    cas_emulator: EmulatorClient, schedule: list[Fault]
) -> None:
    emulator = cas_emulator
    emulator.reset()
    for fault in schedule:
        _state, method, path = REQUESTS[fault.request]
        emulator.add_fault({"status": fault.status}, method=method, path=path, times=fault.times)
    state = BuildState(
        plan=plan_dockerfile(HELLO),
        options=BuildOptions(api_url=emulator.url, cas=True),
        machine=CAS_MACHINE,
        cas=CasProgress(),
    )
    run = asyncio.run(run_to_end(emulator, state=state, spec=SPEC))
    remote = emulator.image_builds()
    assert len(remote) <= 1
    assert all(build["status"] in TERMINAL_STATUSES for build in remote), remote
    assert emulator.live_sandboxes() == []
    if fits(schedule):
        assert run.state.outcome == "done", (schedule, run.state.error)
        assert [build["status"] for build in remote] == ["succeeded"]
    else:
        assert run.state.outcome == "failed", schedule
