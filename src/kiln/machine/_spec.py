"""Load and validate a declared machine (``states/<name>.toml``; the build's is ``build``).

The TOML file is the single source of truth for states, triggers, edges, attempt budgets,
deadlines and each state's special rules. An installed wheel carries it as
``kiln/_states/<name>.toml``; a source checkout keeps it at the repository root, so both places
are tried in that order.
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
from kiln.machine._outcome import Trigger

# The machine a build runs unless told otherwise: states/build.toml.
BUILD_MACHINE = "build"
MACHINE_SUFFIX = ".toml"
# Where the wheel's force-include puts states/ (see pyproject's hatch config).
_INSTALLED_DIR = "_states"
# src/kiln/machine/_spec.py → parents[3] is the checkout root holding states/.
_CHECKOUT_STATES = Path(__file__).resolve().parents[3] / "states"

# The edges every state's handler outcome may need: the driver fires these.
REQUIRED_TRIGGERS: tuple[str, ...] = (
    Trigger.SUCCEED.value,
    Trigger.FAIL.value,
    Trigger.CANCEL.value,
)
# Interventions' `from` value for "every state that is not final".
ANY_STATE = "*"


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
    # The rules of a state that must run however the build went (see states/build.toml).
    leaves_as_entered: bool = False
    ignores_cancel: bool = False
    reruns_when_interrupted: bool = False
    grace_s: float | None = None
    gives_up: str | None = None
    keeps_first_error: bool = False
    diagnoses: bool = True
    # The phase as people read it ("creating the builder"); the live view shows it.
    label: str = ""


@attrs.frozen
class Intervention:
    """An edge no handler takes: fired on a build nobody runs, from any of ``sources`` (None:
    from every state that is not final)."""

    trigger: str
    sources: tuple[str, ...] | None
    dest: str
    # For a `leaves_as_entered` destination: the trigger whose way out it takes.
    enters_as: str | None = None

    def leaves(self, state: str) -> bool:
        return state in self.sources if self.sources is not None else True


@attrs.frozen
class MachineSpec:
    name: str
    initial: str
    # The state every way out of a sandbox-holding state passes through; None when none holds one.
    cleanup: str | None
    finals: tuple[str, ...]
    final_docs: Mapping[str, str]
    backoff: Backoff
    states: Mapping[str, StateSpec]
    # Every trigger of the machine, with what it means, in declaration order.
    triggers: Mapping[str, str] = attrs.field(factory=dict)
    interventions: Mapping[str, Intervention] = attrs.field(factory=dict)

    def with_backoff(self, backoff: Backoff) -> MachineSpec:
        """This machine with ``backoff`` between the attempts of every state (tests use it to
        make retries cost no wall time, states with a backoff of their own included)."""
        states = {name: attrs.evolve(s, backoff=None) for name, s in self.states.items()}
        return attrs.evolve(self, backoff=backoff, states=states)

    def backoff_of(self, state: str) -> Backoff:
        """The backoff between the attempts of ``state``: its own, else the machine's."""
        return self.states[state].backoff or self.backoff

    def edges(self) -> list[tuple[str, str, str]]:
        """Every (source, trigger, dest) a handler's outcome takes, in declaration order."""
        return [
            (state.name, trigger, dest)
            for state in self.states.values()
            for trigger, dest in state.on.items()
        ]

    def intervention_edges(self) -> list[tuple[str, str, str]]:
        """Every (source, trigger, dest) of the interventions; source ANY_STATE means every
        state that is not final."""
        return [
            (source, i.trigger, i.dest)
            for i in self.interventions.values()
            for source in (i.sources if i.sources is not None else (ANY_STATE,))
        ]

    def final_of(self, trigger: str) -> str:
        """The final state the edges named ``trigger`` lead to (the loader checks there is one
        for each of succeed, fail and cancel): where a build that succeeded, failed or was
        cancelled ends."""
        return next(dest for _, t, dest in self.edges() if t == trigger and dest in self.finals)

    def way_out(self, state: str, outcome: str | None) -> str:
        """The trigger by which a `leaves_as_entered` ``state`` leaves towards ``outcome`` (the
        final recorded when it was entered); fail when none was (the build's own error is
        already recorded)."""
        exits = self.states[state].on
        return next((t for t, dest in exits.items() if dest == outcome), Trigger.FAIL.value)


def machine_names() -> list[str]:
    """The names of the declared machines (each ``states/<name>.toml``), sorted; the installed
    copy's when there is one, else the checkout's."""
    installed = importlib.resources.files("kiln") / _INSTALLED_DIR
    if installed.is_dir():
        files = [entry.name for entry in installed.iterdir()]
    else:
        files = [path.name for path in _CHECKOUT_STATES.iterdir()]
    return sorted(
        name.removesuffix(MACHINE_SUFFIX) for name in files if name.endswith(MACHINE_SUFFIX)
    )


def default_spec_path(name: str = BUILD_MACHINE) -> Path:
    """The installed copy of ``states/<name>.toml`` when there is one, else the checkout's."""
    installed = importlib.resources.files("kiln") / _INSTALLED_DIR / f"{name}{MACHINE_SUFFIX}"
    if installed.is_file():
        return Path(str(installed))
    return _CHECKOUT_STATES / f"{name}{MACHINE_SUFFIX}"


def load_machine_spec(path: Path | None = None, *, name: str = BUILD_MACHINE) -> MachineSpec:
    """Read, parse and validate a machine declaration (``path``, else the machine called
    ``name``); ConfigError says what is wrong."""
    if path is None:
        return _default_spec(name)
    return _load(path)


@functools.cache
def _default_spec(name: str) -> MachineSpec:
    # Every build reads the same declaration: parsing it once per process saves ~3 ms of CPU
    # per build, which adds up when one process drives hundreds (bench_many's profile).
    return _load(default_spec_path(name))


def _load(source: Path) -> MachineSpec:
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(
            f"cannot read the machine declaration {source}: {error}",
            hint=f"reinstall kiln, or restore states/{source.name} in the checkout",
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
                silence_s=_seconds(body, "silence_s"),
                leaves_as_entered=bool(body.get("leaves_as_entered", False)),
                ignores_cancel=bool(body.get("ignores_cancel", False)),
                reruns_when_interrupted=bool(body.get("reruns_when_interrupted", False)),
                grace_s=_seconds(body, "grace_s"),
                gives_up=str(body["gives_up"]) if "gives_up" in body else None,
                keeps_first_error=bool(body.get("keeps_first_error", False)),
                diagnoses=bool(body.get("diagnoses", True)),
                label=str(body.get("label") or name.replace("_", " ")),
            )
            for name, body in data["states"].items()
        }
        return MachineSpec(
            name=str(machine["name"]),
            initial=str(machine["initial"]),
            cleanup=str(machine["cleanup_state"]) if "cleanup_state" in machine else None,
            finals=tuple(machine["finals"]),
            final_docs={name: str(body["doc"]) for name, body in data.get("finals", {}).items()},
            backoff=_backoff(backoff),
            states=states,
            triggers={name: str(doc) for name, doc in data["triggers"].items()},
            interventions={
                trigger: _intervention(trigger, body)
                for trigger, body in data.get("interventions", {}).items()
            },
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ConfigError(
            f"{source}: malformed machine declaration ({error!r})",
            hint=f"compare it with the documented layout at the top of states/{BUILD_MACHINE}.toml",
        ) from error


def _seconds(body: Mapping[str, Any], key: str) -> float | None:
    return float(body[key]) if key in body else None


def _intervention(trigger: str, body: Mapping[str, Any]) -> Intervention:
    sources = body["from"]
    return Intervention(
        trigger=trigger,
        sources=None if sources == ANY_STATE else tuple(str(s) for s in sources),
        dest=str(body["to"]),
        enters_as=str(body["enters_as"]) if "enters_as" in body else None,
    )


def _backoff(body: Mapping[str, Any]) -> Backoff:
    return Backoff(
        initial_s=float(body["initial_s"]), factor=float(body["factor"]), max_s=float(body["max_s"])
    )


def validate(spec: MachineSpec) -> None:
    """Check the declaration is a machine the driver can run; the first problem found is raised."""
    problems = _problems(spec)
    if problems:
        raise ConfigError(
            f"invalid machine {spec.name!r}: {problems[0]}",
            hint=f"fix states/{spec.name}.toml; every edge must lead to a declared state",
        )


def _problems(spec: MachineSpec) -> list[str]:
    known = set(spec.states) | set(spec.finals)
    found: list[str] = []
    if spec.initial not in spec.states:
        found.append(f"initial state {spec.initial!r} is not declared")
    if spec.cleanup is not None and spec.cleanup not in spec.states:
        found.append(f"cleanup state {spec.cleanup!r} is not declared")
    found.extend(
        f"final {final!r} is also a state" for final in spec.finals if final in spec.states
    )
    found.extend(_trigger_problems(spec))
    for state in spec.states.values():
        found.extend(_state_problems(spec, state, known))
    for intervention in spec.interventions.values():
        found.extend(_intervention_problems(spec, intervention, known))
    return found


def _trigger_problems(spec: MachineSpec) -> list[str]:
    """Every trigger is one the code fires (a Trigger), and every one an edge uses is declared."""
    fired = {str(t) for t in Trigger}
    found = [f"trigger {t!r}: no code fires it" for t in spec.triggers if t not in fired]
    used = [t for _, t, _ in spec.edges()] + list(spec.interventions)
    found += [
        f"trigger {t!r} is not declared under [triggers]"
        for t in dict.fromkeys(used)
        if t not in spec.triggers
    ]
    found += [
        f"no {t!r} edge leads to a final state"
        for t in REQUIRED_TRIGGERS
        if not any(tr == t and dest in spec.finals for _, tr, dest in spec.edges())
    ]
    found += [
        f"{t!r} edges lead to several finals"
        for t in REQUIRED_TRIGGERS
        if len({d for _, tr, d in spec.edges() if tr == t and d in spec.finals}) > 1
    ]
    return found


def _intervention_problems(spec: MachineSpec, i: Intervention, known: set[str]) -> list[str]:
    found = [f"{i.trigger}: from unknown {s!r}" for s in i.sources or () if s not in spec.states]
    if i.dest not in known:
        found.append(f"{i.trigger}: to unknown {i.dest!r}")
        return found
    dest = spec.states.get(i.dest)
    if dest is not None and dest.leaves_as_entered and dest.on.get(i.enters_as or "") is None:
        found.append(f"{i.trigger}: enters {i.dest!r}, so enters_as must name one of its edges")
    return found


def _state_problems(spec: MachineSpec, state: StateSpec, known: set[str]) -> list[str]:
    found = [f"{state.name}: no {t!r} edge" for t in REQUIRED_TRIGGERS if t not in state.on]
    found += [f"{state.name}: edge to unknown {d!r}" for d in state.on.values() if d not in known]
    if state.attempts < 1:
        found.append(f"{state.name}: attempts must be at least 1")
    if state.attempts > 1 and state.on.get(Trigger.RETRY) != state.name:
        found.append(f"{state.name}: attempts > 1 needs a retry edge back to itself")
    found += [
        f"{state.name}: {name} must be positive"
        for name in ("deadline_s", "silence_s", "grace_s")
        if (getattr(state, name) or 1) <= 0
    ]
    if state.holds_sandbox and state.name != spec.cleanup:
        found += [
            f"{state.name}: holds a sandbox, so {t!r} must lead to {spec.cleanup!r}"
            for t in (Trigger.FAIL.value, Trigger.CANCEL.value)
            if state.on.get(t) != spec.cleanup
        ]
    if state.gives_up is not None and not state.leaves_as_entered:
        found.append(f"{state.name}: gives_up needs leaves_as_entered (it leaves as entered)")
    if state.leaves_as_entered:
        found += _leaves_as_entered_problems(spec, state)
    return found


def _leaves_as_entered_problems(spec: MachineSpec, state: StateSpec) -> list[str]:
    """Its way out is read back from the final it recorded: each final must name one edge."""
    exits = [dest for t, dest in state.on.items() if t != Trigger.RETRY]
    found = [
        f"{state.name}: leaves as entered, so {d!r} must be final"
        for d in exits
        if d not in spec.finals
    ]
    if len(set(exits)) != len(exits):
        found.append(f"{state.name}: leaves as entered, so its edges must lead to distinct finals")
    entering = {t for _, t, dest in spec.edges() if dest == state.name} - {Trigger.RETRY}
    found += [
        f"{state.name}: entered by {t!r} but has no {t!r} edge out"
        for t in sorted(entering)
        if t not in state.on
    ]
    return found
