"""kiln's error hierarchy, all of it: every error kiln raises on purpose is defined here.

Every error kiln raises on purpose is a :class:`KilnError`. Catch at the depth you need::

    KilnError
    ├── UsageError            bad options or arguments (CLI exit 2)
    │   ├── BuildNotFound     no persisted build has this id (or id prefix)
    │   └── AmbiguousBuildId  an id prefix matches several builds
    ├── PlanError             the Dockerfile or the build context cannot be planned (CLI exit 2)
    │   ├── DockerfileError   carries the 1-based line number
    │   └── ContextError      missing context, unreadable or changing files, bad extra files
    ├── ConfigError           credentials or URLs are missing or inconsistent
    ├── ApiError              a remote call failed; ``transient`` says whether a retry may help
    │   ├── AuthenticationError   HTTP 401
    │   ├── AuthorizationError    HTTP 403
    │   ├── ServerError           any other non-2xx status
    │   ├── ResponseError         a 2xx body that is not what the contract says (names the field)
    │   ├── TransportError        connect error, timeout, dropped connection (always transient)
    │   └── ChunkedUploadRefused  the proxy wants the upload again with a known length
    ├── BuildError            the build itself failed
    │   ├── BuildFailed       wraps the cause once the builder sandbox exists (names sandbox and build)
    │   ├── WithDiagnostics   wraps the cause once the proxy is ready (adds OOM / disk advice)
    │   ├── PhaseTimeout      a phase overran its declared deadline
    │   ├── BuildCancelled    the build was cancelled
    │   └── BuildHandedOver   this process stopped running the build; it continues elsewhere
    │       └── StoreOutage   ... because the store stayed unreachable (CLI exit 75)
    ├── StoreUnavailable      the build store cannot be reached or opened
    ├── StaleWriteError       a write lost to a newer one (another process took the build over)
    ├── OwnedElsewhere        another live process holds the build
    ├── LeaseLost             this process no longer owns the build it was running
    └── UnreadableBuild       a persisted build this kiln cannot load (newer kiln, or damaged)

Each error's message says what was wrong; ``hint`` (when set) says what to do about it.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kiln.store import Owner


class KilnError(Exception):
    """Base class of every error kiln raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message

    def display(self) -> str:
        """The message followed by the hint, as the CLI prints it."""
        return f"{self}\nhint: {self.hint}" if self.hint else str(self)


class UsageError(KilnError):
    """An option or argument is invalid."""


class BuildNotFound(UsageError):
    """No build has this id (or the prefix matches none)."""

    def __init__(self, build_id: str) -> None:
        super().__init__(f"no build {build_id!r} in the store", hint="`kiln ls` lists the builds")
        self.build_id = build_id


class AmbiguousBuildId(UsageError):
    """An id prefix matches more than one build."""

    def __init__(self, prefix: str, matches: Sequence[str]) -> None:
        super().__init__(
            f"build id prefix {prefix!r} matches several builds: {', '.join(matches)}",
            hint="give more characters of the id",
        )
        self.prefix = prefix
        self.matches = list(matches)


class PlanError(KilnError):
    """The build cannot be planned from the given inputs."""


class DockerfileError(PlanError):
    """A Dockerfile instruction is malformed; ``line`` is its first physical line (1-based)."""

    def __init__(self, line: int, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"line {line}: {message}", hint=hint)
        self.line = line
        self.reason = message


class ContextError(PlanError):
    """The build context is missing, unreadable, or changed while being archived."""


class ConfigError(KilnError):
    """Credentials, scope or URLs are missing or inconsistent."""


class ApiError(KilnError):
    """A remote call failed.

    ``status`` is the HTTP status when there was a response; ``body`` is the (possibly truncated)
    response text. ``transient`` is True when repeating the same call may succeed.
    """

    transient: bool = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: str = "",
        transient: bool | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.body = body
        if transient is not None:
            self.transient = transient


class AuthenticationError(ApiError):
    """HTTP 401: the token was refused."""


class AuthorizationError(ApiError):
    """HTTP 403: the token may not do this."""


class ServerError(ApiError):
    """Any other non-2xx response."""


class ResponseError(ApiError):
    """A successful response whose body breaks the contract (bad JSON, missing field)."""


class TransportError(ApiError):
    """No usable response: connect error, timeout, reset. Always transient."""

    transient = True


class ChunkedUploadRefused(ApiError):
    """The proxy will not take a streamed (chunked) upload: send it again with a known length."""


class BuildError(KilnError):
    """The build failed."""


class BuildFailed(BuildError):
    """A failure after the builder sandbox exists: names the phase, the sandbox and the build."""

    def __init__(
        self,
        source: BaseException,
        *,
        sandbox_id: str,
        build_id: str | None,
        phase: str | None = None,
    ) -> None:
        self.source = source
        self.sandbox_id = sandbox_id
        self.build_id = build_id
        self.phase = phase
        # The advice of a diagnosed failure stays reachable at the top of the chain.
        self.advice: list[str] = list(getattr(source, "advice", []))
        parts = [f"phase: {phase}"] if phase else []
        parts.append(f"builder sandbox: {sandbox_id}")
        if build_id:
            parts.append(f"build: {build_id}")
        super().__init__(f"{source} ({', '.join(parts)})", hint=getattr(source, "hint", None))


class WithDiagnostics(BuildError):
    """A failure after the proxy is ready, with advice drawn from dmesg, df and the build log."""

    def __init__(self, source: BaseException, advice: list[str]) -> None:
        self.source = source
        self.advice = list(advice)
        text = "\n".join([str(source), *self.advice]) if self.advice else str(source)
        super().__init__(text, hint=getattr(source, "hint", None))


class PhaseTimeout(BuildError):
    """A phase (or the whole build, phase ``"build"``) ran past its deadline.

    Once the build is under way the error says where it was (``during``), names the builder
    sandbox and the build, and keeps the last error of the attempts the deadline cut short as
    ``last_error`` (also its ``__cause__``): a retried 503 is what the user needs to see.
    """

    def __init__(
        self,
        phase: str,
        limit_s: float,
        *,
        during: str | None = None,
        sandbox_id: str | None = None,
        build_id: str | None = None,
        last_error: BaseException | None = None,
    ) -> None:
        message = f"phase {phase!r} did not finish within its {limit_s:g}s deadline"
        where = [f"in phase: {during}"] if during and during != phase else []
        where += [f"builder sandbox: {sandbox_id}"] if sandbox_id else []
        where += [f"build: {build_id}"] if build_id else []
        if where:
            message += f" ({', '.join(where)})"
        if last_error is not None:
            message += f"; last error: {last_error}"
        super().__init__(
            message, hint="the platform may be overloaded; retry later, or raise the deadline"
        )
        self.phase = phase
        self.limit_s = limit_s
        self.during = during
        self.sandbox_id = sandbox_id
        self.build_id = build_id
        self.last_error = last_error
        self.__cause__ = last_error

    def in_context(
        self,
        *,
        during: str,
        sandbox_id: str | None,
        build_id: str | None,
        last_error: BaseException | None,
    ) -> PhaseTimeout:
        """The same timeout, saying where the build was and what last went wrong."""
        return PhaseTimeout(
            self.phase,
            self.limit_s,
            during=during,
            sandbox_id=sandbox_id,
            build_id=build_id,
            last_error=last_error,
        )


class BuildCancelled(BuildError):
    """The build was cancelled before it finished."""


class BuildHandedOver(BuildError):
    """This process stopped running the build; it continues elsewhere (or on ``kiln resume``)."""


class StoreOutage(BuildHandedOver):
    """The store stayed unreachable past the retry bound: the build stopped at its last persisted
    point, untouched (its sandbox kept), and continues on ``kiln resume`` once the store is back."""


class StoreUnavailable(KilnError):
    """The store cannot be reached or opened (database down, file not writable, busy too long)."""


class StaleWriteError(KilnError):
    """A compare-and-set write lost: the build moved on since the writer read it."""

    def __init__(self, build_id: str, *, expected: int, actual: int | None, reason: str) -> None:
        super().__init__(
            f"build {build_id}: stale write refused ({reason}; expected version {expected},"
            f" stored version {actual})",
            hint="another process has taken this build over; stop this one and let the owner go on",
        )
        self.build_id = build_id
        self.expected = expected
        self.actual = actual


class OwnedElsewhere(KilnError):
    """The build is held by another live owner."""

    def __init__(self, build_id: str, owner: Owner, lease_expires_at: float | None) -> None:
        until = _iso(lease_expires_at) if lease_expires_at is not None else "no lease"
        super().__init__(
            f"build {build_id} is owned by {owner.describe()}, lease until {until}",
            hint="wait for that process to finish or stop it; a build whose owner died is taken"
            " over when its lease expires (at once when the owner was on this host)",
        )
        self.build_id = build_id
        self.owner = owner
        self.lease_expires_at = lease_expires_at


class LeaseLost(KilnError):
    """A renewal found that this worker no longer owns the build."""

    def __init__(self, build_id: str, claimant: Owner, owner: Owner | None) -> None:
        now_held = f"now owned by {owner.describe()}" if owner else "released"
        super().__init__(
            f"build {build_id}: {claimant.describe()} lost its lease ({now_held})",
            hint="stop working on this build; its new owner resumes it",
        )
        self.build_id = build_id
        self.owner = owner


class UnreadableBuild(KilnError):
    """A persisted build this kiln cannot load: written by a newer kiln, or damaged."""


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC).isoformat(timespec="seconds")


__all__ = [
    "AmbiguousBuildId",
    "ApiError",
    "AuthenticationError",
    "AuthorizationError",
    "BuildCancelled",
    "BuildError",
    "BuildFailed",
    "BuildHandedOver",
    "BuildNotFound",
    "ChunkedUploadRefused",
    "ConfigError",
    "ContextError",
    "DockerfileError",
    "KilnError",
    "LeaseLost",
    "OwnedElsewhere",
    "PhaseTimeout",
    "PlanError",
    "ResponseError",
    "ServerError",
    "StaleWriteError",
    "StoreOutage",
    "StoreUnavailable",
    "TransportError",
    "UnreadableBuild",
    "UsageError",
    "WithDiagnostics",
]
