"""What a handler reports back to the driver: which trigger to fire, and the error behind it."""

from __future__ import annotations

import enum

import attrs

from kiln.api import is_transient


class Trigger(enum.StrEnum):
    """The triggers the code fires. Their names and meanings are declared under [triggers] in
    states/ (each value is its member's name in lower case); the loader refuses a declared
    trigger no code fires, and an edge with an undeclared one."""

    # Fired by the driver, from a handler's outcome.
    SUCCEED = enum.auto()
    RETRY = enum.auto()
    FAIL = enum.auto()
    CANCEL = enum.auto()
    # Fired on a build nobody runs (see [interventions]).
    SANDBOX_LOST = enum.auto()
    START_OVER = enum.auto()
    REAPED = enum.auto()
    UNREADABLE = enum.auto()
    # Fired on a new build before it runs: an unchanged earlier build's template is still there.
    CACHE_HIT = enum.auto()


@attrs.frozen
class Outcome:
    trigger: Trigger
    error: BaseException | None = None
    # The attempt moved the phase forward before it failed (new builder output, say): in a state
    # declaring `progress_resets_attempts`, the attempt count starts again.
    progressed: bool = False


SUCCEEDED = Outcome(Trigger.SUCCEED)
CANCELLED = Outcome(Trigger.CANCEL)


def retry(error: BaseException, *, progressed: bool = False) -> Outcome:
    return Outcome(Trigger.RETRY, error, progressed)


def fail(error: BaseException) -> Outcome:
    return Outcome(Trigger.FAIL, error)


def outcome_for(error: BaseException) -> Outcome:
    """An exception a handler raised: transient errors take the retry edge, the rest fail."""
    return retry(error) if is_transient(error) else fail(error)
