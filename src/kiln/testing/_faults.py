"""Fault schedules: which request fails how and when, what the builder does, and what a build
under that schedule must end as.

A schedule holds at most one request fault per phase and per kind of request, which keeps its
verdict exact: each attempt of a phase makes the faulted request once, so ``times`` transient
faults cost ``times`` extra attempts, and the build is ``done`` exactly when every phase's extra
attempts fit its budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from kiln.emulator import SignMode
from kiln.errors import UsageError
from kiln.machine import MachineSpec, Trigger, load_machine_spec
from kiln.machine.handlers import Handler
from kiln.machine.handlers.builder import run_builder
from kiln.machine.handlers.cleanup import cleanup
from kiln.machine.handlers.finish import complete
from kiln.machine.handlers.prepare import prepare
from kiln.machine.handlers.sandbox import create_sandbox
from kiln.machine.handlers.sign import sign
from kiln.machine.handlers.upload import upload
from kiln.testing._client import EmulatorClient

SIGN_MODES: tuple[SignMode, ...] = ("legacy", "new")

# Answers the client retries (docs/protocol.md#transient-errors): gateway errors, and a connection
# reset.
TRANSIENT_STATUSES = (502, 503, 504)
# Answers that end the build at once. 404 is left out on purpose: several calls give it a meaning
# of its own (no parent template, sandbox already deleted), so it is not a plain failure there.
PERMANENT_STATUSES = (400, 401, 403, 409, 500)
# A lost sandbox, as the proxy reports it: a 400 whose body says "not running" is transient, so
# kiln retries until the phase's budget is spent.
LOST_SANDBOX_STATUS = 400
LOST_SANDBOX_BODY = '{"code": "NOT_RUNNING", "message": "sandbox is not running (status: lost)"}'
PROXY_PATHS = r"^/api/v1/"


def _in(*handlers: Handler) -> tuple[str, ...]:
    """The states whose handlers make a request, in order. A handler is named after its state
    (checked against the declaration), so a state renamed in states/ cannot go unnoticed here."""
    return tuple(handler.__name__ for handler in handlers)


@attrs.frozen
class Target:
    """A kind of request kiln makes, and the phase of each such request in a fault-free build
    against a platform with one of ``sign_modes`` (the emulator's ``sign_mode``)."""

    name: str
    method: str
    path: str
    phases: tuple[str, ...]
    sign_modes: tuple[SignMode, ...] = SIGN_MODES
    # How many of these requests one attempt of its phase sends side by side, each whatever
    # the others' answers (upload's two PUTs): a firing then costs an attempt only when it is
    # the first in its attempt.
    per_attempt: int = 1


# In the order a fault-free Dockerfile build makes them.
TARGETS: tuple[Target, ...] = (
    Target("template_lookup", "GET", r"^/platform/v1/sandbox-templates/by-name/", _in(prepare)),
    Target("prepare", "POST", r"^/platform/v1/sandbox-template-builds$", _in(prepare)),
    Target("create_sandbox", "POST", r"^/v1/namespaces/[^/]+/sandboxes$", _in(create_sandbox)),
    # Only the new upload path signs: the legacy one never makes this request.
    Target("sign", "POST", r"^/api/v1/blob/sign$", _in(sign), sign_modes=("new",)),
    Target("put_file", "PUT", r"^/api/v1/files$", _in(upload, upload), per_attempt=2),
    Target("start_builder", "POST", r"^/api/v1/processes$", _in(run_builder)),
    Target("follow", "GET", r"^/api/v1/processes/\d+/output/follow$", _in(run_builder)),
    Target("complete", "POST", r"/complete$", _in(complete)),
    Target("delete_sandbox", "DELETE", r"^/v1/namespaces/[^/]+/sandboxes/[^/]+$", _in(cleanup)),
)
TARGETS_BY_NAME: Mapping[str, Target] = {target.name: target for target in TARGETS}
# The phase of each proxy request of a fault-free build, in order: where a sandbox can be lost.
# The two PUTs (archive and spec.json) go side by side; the builder's process is started, then
# followed.
_LATER_PHASES = _in(upload) * 2 + _in(run_builder) * 2
PROXY_PHASES: Mapping[SignMode, tuple[str, ...]] = {
    "legacy": _LATER_PHASES,
    "new": (*_in(sign), *_LATER_PHASES),
}


@attrs.frozen
class RequestFault:
    """The ``after``+1-th request of ``target`` and the ones after it get ``action``, ``times``
    times: ``{"status": N}``, ``{"reset": True}``, ``{"delay_ms": N}`` or
    ``{"cut_stream_after": N}``."""

    target: Target
    action: Mapping[str, Any]
    times: int
    after: int = 0

    @property
    def phase(self) -> str:
        return self.target.phases[self.after]

    @property
    def transient(self) -> bool:
        """Whether kiln retries after this fault: a retried status, a reset, a cut stream (at
        most one attempt per firing), or a delay (no failure at all)."""
        status = self.action.get("status")
        return status is None or status in TRANSIENT_STATUSES

    @property
    def harmless(self) -> bool:
        """A delay: the request still succeeds, only later."""
        return "delay_ms" in self.action

    def rule(self) -> dict[str, Any]:
        """The keyword arguments of :meth:`EmulatorClient.add_fault` for this fault."""
        return {
            "action": dict(self.action),
            "method": self.target.method,
            "path": self.target.path,
            "times": self.times,
            "after": self.after,
        }


@attrs.frozen
class FaultSchedule:
    """Request faults (one per phase at most), builder behaviour and an optional lost sandbox."""

    faults: tuple[RequestFault, ...] = ()
    # Fields for POST /_emulator/builder: exit_code, oom_kill, enospc, signal.
    builder: Mapping[str, Any] = attrs.field(factory=dict)
    # The index in PROXY_PHASES of the first proxy request that finds the sandbox gone.
    sandbox_lost_at: int | None = None
    # The sign mode of the emulator the schedule is for: it decides which requests exist.
    sign_mode: SignMode = "legacy"

    def __attrs_post_init__(self) -> None:
        for fault in self.faults:
            if self.sign_mode not in fault.target.sign_modes:
                raise UsageError(
                    f"a {self.sign_mode!r} platform makes no {fault.target.name!r} request",
                    hint=f"use sign_mode={fault.target.sign_modes[0]!r} for this fault",
                )
        # Two rules on one kind of request count each other's matches, and two faults in one
        # phase add up their attempts: either way the verdict would no longer be exact.
        for what, keys in (
            ("phase", [fault.phase for fault in self.faults]),
            ("request kind", [fault.target.name for fault in self.faults]),
        ):
            if len(set(keys)) != len(keys):
                raise UsageError(
                    f"a fault schedule holds one fault per {what} at most, got {keys}",
                    hint="merge the faults into one (its times add up), or use two schedules",
                )

    def install(self, emulator: EmulatorClient) -> None:
        """Put the schedule in place on a (freshly reset) emulator."""
        for fault in self.faults:
            emulator.add_fault(**fault.rule())
        if self.builder:
            emulator.set_builder(**self.builder)
        if self.sandbox_lost_at is not None:
            emulator.add_fault(
                {"status": LOST_SANDBOX_STATUS, "body": LOST_SANDBOX_BODY},
                path=PROXY_PATHS,
                times=None,
                after=self.sandbox_lost_at,
            )

    def failing_phase(self, spec: MachineSpec | None = None) -> str | None:
        """The phase the build must fail in, or None when it must end ``done``.

        ``spec`` is the machine the build runs (default: the declared one); only its attempt
        budgets matter, so a spec without backoff gives the same answer.
        """
        spec = spec or load_machine_spec()
        order = list(spec.states)
        failing = [
            fault.phase
            for fault in self.faults
            if fault.phase != spec.cleanup and _exceeds(fault, spec)
        ]
        if self.builder_fails:
            failing.append(run_builder.__name__)
        if self.sandbox_lost_at is not None:
            failing.append(PROXY_PHASES[self.sign_mode][self.sandbox_lost_at])
        return min(failing, key=order.index, default=None)

    def expected_outcome(self, spec: MachineSpec | None = None) -> str:
        """``done`` or ``failed``: how a build under this schedule must end."""
        spec = spec or load_machine_spec()
        succeeded = self.failing_phase(spec) is None
        return spec.final_of(Trigger.SUCCEED if succeeded else Trigger.FAIL)

    def leaks_sandbox(self, spec: MachineSpec | None = None) -> bool:
        """Whether cleanup's delete keeps failing past its budget (kiln then warns and leaves)."""
        spec = spec or load_machine_spec()
        return any(fault.phase == spec.cleanup and _exceeds(fault, spec) for fault in self.faults)

    @property
    def builder_fails(self) -> bool:
        return bool(
            self.builder.get("exit_code")
            or self.builder.get("oom_kill")
            or self.builder.get("enospc")
            or self.builder.get("signal")
        )


def _exceeds(fault: RequestFault, spec: MachineSpec) -> bool:
    """Whether the fault alone is more than the phase's attempt budget absorbs."""
    if fault.harmless:
        return False
    if not fault.transient and fault.phase != spec.cleanup:
        return True
    # Each attempt with a firing in it fails; the attempt after the last firing succeeds.
    return _attempts_failed(fault) + 1 > spec.states[fault.phase].attempts


def _attempts_failed(fault: RequestFault) -> int:
    """The attempts the firings fall in: the target's requests are numbered from 0 in the order
    sent, ``per_attempt`` to an attempt, and the firings are numbers after .. after+times-1."""
    per = fault.target.per_attempt
    first, last = fault.after, fault.after + fault.times - 1
    return last // per - first // per + 1
