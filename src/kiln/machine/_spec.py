"""Load and validate the declared build machine (``states/build.toml``).

The TOML file is the single source of truth for states, edges, attempt budgets and deadlines. An
installed wheel carries it as ``kiln/_states/build.toml``; a source checkout keeps it at the
repository root, so both places are tried in that order.
"""

from __future__ import annotations

import functools
import importlib.resources
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from kiln.errors import ConfigError

MACHINE_FILE = "build.toml"
# Where the wheel's force-include puts states/ (see pyproject's hatch config).
_INSTALLED_DIR = "_states"
# src/kiln/machine/_spec.py → parents[3] is the checkout root holding states/.
_CHECKOUT_STATES = Path(__file__).resolve().parents[3] / "states"

TRIGGERS = ("succeed", "retry", "fail", "cancel")
REQUIRED_TRIGGERS = ("succeed", "fail", "cancel")


@attrs.frozen
class Backoff:
    """Delay before attempt n+1: ``initial_s * factor**(n-1)``, capped at ``max_s``."""

    initial_s: float
    factor: float
    max_s: float

    def delay(self, attempts_done: int) -> float:
        return float(min(self.max_s, self.initial_s * self.factor ** max(0, attempts_done - 1)))


@attrs.frozen
class StateSpec:
    name: str
    doc: str
    holds_sandbox: bool
    attempts: int
    deadline_s: float
    on: Mapping[str, str]
    # The state's own backoff between attempts; None means the machine's.
    backoff: Backoff | None = None
    # An attempt that made progress before failing starts the attempt count again.
    progress_resets_attempts: bool = False
    # run_builder: ask the process's status after this long without output.
    silence_s: float | None = None


@attrs.frozen
class MachineSpec:
    name: str
    initial: str
    cleanup: str
    finals: tuple[str, ...]
    final_docs: Mapping[str, str]
    backoff: Backoff
    states: Mapping[str, StateSpec]

    def with_backoff(self, backoff: Backoff) -> MachineSpec:
        """This machine with ``backoff`` between the attempts of every state (tests use it to
        make retries cost no wall time, states with a backoff of their own included)."""
        states = {name: attrs.evolve(s, backoff=None) for name, s in self.states.items()}
        return attrs.evolve(self, backoff=backoff, states=states)

    def backoff_of(self, state: str) -> Backoff:
        """The backoff between the attempts of ``state``: its own, else the machine's."""
        return self.states[state].backoff or self.backoff

    def edges(self) -> list[tuple[str, str, str]]:
        """Every (source, trigger, dest), in declaration order."""
        return [
            (state.name, trigger, dest)
            for state in self.states.values()
            for trigger, dest in state.on.items()
        ]


def default_spec_path() -> Path:
    """The installed copy when there is one, else the checkout's ``states/build.toml``."""
    installed = importlib.resources.files("kiln") / _INSTALLED_DIR / MACHINE_FILE
    if installed.is_file():
        return Path(str(installed))
    return _CHECKOUT_STATES / MACHINE_FILE


def load_machine_spec(path: Path | None = None) -> MachineSpec:
    """Read, parse and validate a machine declaration; ConfigError says what is wrong."""
    if path is None:
        return _default_spec()
    return _load(path)


@functools.cache
def _default_spec() -> MachineSpec:
    # Every build reads the same declaration: parsing it once per process saves ~3 ms of CPU
    # per build, which adds up when one process drives hundreds (bench_many's profile).
    return _load(default_spec_path())


def _load(source: Path) -> MachineSpec:
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(
            f"cannot read the build machine declaration {source}: {error}",
            hint="reinstall kiln, or restore states/build.toml in the checkout",
        ) from error
    spec = _parse(data, source)
    validate(spec)
    return spec


def _parse(data: Mapping[str, Any], source: Path) -> MachineSpec:
    try:
        machine = data["machine"]
        backoff = data["backoff"]
        states = {
            name: StateSpec(
                name=name,
                doc=str(body["doc"]),
                holds_sandbox=bool(body["holds_sandbox"]),
                attempts=int(body["attempts"]),
                deadline_s=float(body["deadline_s"]),
                on=dict(body["on"]),
                backoff=_backoff(body["backoff"]) if "backoff" in body else None,
                progress_resets_attempts=bool(body.get("progress_resets_attempts", False)),
                silence_s=float(body["silence_s"]) if "silence_s" in body else None,
            )
            for name, body in data["states"].items()
        }
        return MachineSpec(
            name=str(machine["name"]),
            initial=str(machine["initial"]),
            cleanup=str(machine["cleanup"]),
            finals=tuple(machine["finals"]),
            final_docs={name: str(body["doc"]) for name, body in data.get("finals", {}).items()},
            backoff=_backoff(backoff),
            states=states,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ConfigError(
            f"{source}: malformed build machine declaration ({error!r})",
            hint="compare it with the documented layout at the top of states/build.toml",
        ) from error


def _backoff(body: Mapping[str, Any]) -> Backoff:
    return Backoff(
        initial_s=float(body["initial_s"]), factor=float(body["factor"]), max_s=float(body["max_s"])
    )


def validate(spec: MachineSpec) -> None:
    """Check the declaration is a machine the driver can run; the first problem found is raised."""
    problems = _problems(spec)
    if problems:
        raise ConfigError(
            f"invalid build machine {spec.name!r}: {problems[0]}",
            hint="fix states/build.toml; every edge must lead to a declared state",
        )


def _problems(spec: MachineSpec) -> list[str]:
    known = set(spec.states) | set(spec.finals)
    found: list[str] = []
    if spec.initial not in spec.states:
        found.append(f"initial state {spec.initial!r} is not declared")
    if spec.cleanup not in spec.states:
        found.append(f"cleanup state {spec.cleanup!r} is not declared")
    found.extend(
        f"final {final!r} is also a state" for final in spec.finals if final in spec.states
    )
    for state in spec.states.values():
        found.extend(_state_problems(spec, state, known))
    return found


def _state_problems(spec: MachineSpec, state: StateSpec, known: set[str]) -> list[str]:
    found = [f"{state.name}: unknown trigger {t!r}" for t in state.on if t not in TRIGGERS]
    found += [f"{state.name}: no {t!r} edge" for t in REQUIRED_TRIGGERS if t not in state.on]
    found += [f"{state.name}: edge to unknown {d!r}" for d in state.on.values() if d not in known]
    if state.attempts < 1:
        found.append(f"{state.name}: attempts must be at least 1")
    if state.attempts > 1 and state.on.get("retry") != state.name:
        found.append(f"{state.name}: attempts > 1 needs a retry edge back to itself")
    if state.deadline_s <= 0:
        found.append(f"{state.name}: deadline_s must be positive")
    if state.silence_s is not None and state.silence_s <= 0:
        found.append(f"{state.name}: silence_s must be positive")
    if state.holds_sandbox and state.name != spec.cleanup:
        found += [
            f"{state.name}: holds a sandbox, so {t!r} must lead to {spec.cleanup!r}"
            for t in ("fail", "cancel")
            if state.on.get(t) != spec.cleanup
        ]
    return found
