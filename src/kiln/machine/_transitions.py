"""Firing a trigger through the declared machine (a transitions AsyncMachine), and what every
transition records in the build state. The driver's loop fires the edges of handler outcomes;
:func:`intervene` fires the declared interventions on a build nobody runs (resume, the reaper,
the worker). Both go through here, so a transition is the same whoever fires it.
"""

from __future__ import annotations

from typing import Any

from transitions.extensions.asyncio import AsyncMachine

from kiln.errors import BuildError
from kiln.machine._events import TransitionEvent
from kiln.machine._spec import ANY_STATE, MachineSpec
from kiln.machine._state import BuildState


class Model:
    """What transitions moves between states; the BuildState mirrors its ``state``."""

    state: str


def build_machine(spec: MachineSpec, model: Model, initial: str) -> AsyncMachine:
    """``spec`` as an AsyncMachine on ``model``, starting in ``initial``: every edge of a handler
    outcome and every intervention. A state this kiln does not declare (written by a newer one)
    may be ``initial``: only the interventions from every state leave it.

    The machine of a declaration is built once per process and shared: each build's model is
    added to it (and taken off by :func:`release`), since building the machine's states and
    edges cost more than the build's own transitions. Only a state nobody declared gets a
    machine of its own."""
    declared = _shape(spec)
    if initial in declared[0]:
        machine = _machines.get(declared)
        if machine is None:
            machine = _machines[declared] = _new_machine(spec, None, initial, declared[0])
        machine.add_model(model, initial=initial)
        return machine
    return _new_machine(spec, model, initial, (*declared[0], initial))


def release(machine: AsyncMachine, model: Model) -> None:
    """Take ``model`` off a machine from :func:`build_machine` once its build stops driving it."""
    if model in machine.models:
        machine.remove_model(model)


# What a machine is made of: (states, edges). Keyed by it rather than by the spec object: tests
# derive specs (another backoff) that make the same machine.
_Shape = tuple[tuple[str, ...], tuple[tuple[str, str, str], ...]]
_machines: dict[_Shape, AsyncMachine] = {}


def _shape(spec: MachineSpec) -> _Shape:
    return (
        (*spec.states, *spec.finals),
        (*spec.edges(), *spec.intervention_edges()),
    )


def _new_machine(
    spec: MachineSpec, model: Model | None, initial: str, states: tuple[str, ...]
) -> AsyncMachine:
    open_states = [name for name in states if name not in spec.finals]
    edges: list[dict[str, Any]] = [
        {"trigger": trigger, "source": source, "dest": dest}
        for source, trigger, dest in spec.edges()
    ]
    edges += [
        {"trigger": trigger, "source": open_states if source == ANY_STATE else source, "dest": dest}
        for source, trigger, dest in spec.intervention_edges()
    ]
    return AsyncMachine(
        model=model,
        states=list(states),
        transitions=edges,
        initial=initial,
        auto_transitions=False,
    )


async def fire(spec: MachineSpec, source: str, trigger: str) -> str:
    """Fire ``trigger`` in ``source`` and return where it leads; BuildError when the
    declaration has no such edge (a bug: the code fires only what is declared)."""
    trigger = str(trigger)
    model = Model()
    machine = build_machine(spec, model, source)
    try:
        # Asked first: a refused trigger would also be logged as an error by transitions.
        if trigger not in machine.get_triggers(source):
            raise BuildError(
                f"internal: states/{spec.name}.toml has no {trigger!r} edge from {source!r}"
            )
        await machine.events[trigger].trigger(model)
        return model.state
    finally:
        release(machine, model)


def enter(
    spec: MachineSpec,
    state: BuildState,
    trigger: str,
    dest: str,
    now: float,
    reason: str | None = None,
) -> TransitionEvent:
    """Record in ``state`` (still in the source) that ``trigger`` moved it to ``dest``, and
    return the transition's event. Entering a `leaves_as_entered` state from another records
    the final its way out leads to (an intervention enters it as its ``enters_as`` trigger);
    entering a final records that final. Either is the build's ``outcome``."""
    source = state.state
    event = TransitionEvent(source, dest, trigger, now - state.state_entered_at, reason)
    target = spec.states.get(dest)
    if dest != source:
        state.state_entered_at = now
        if target is not None and target.leaves_as_entered:
            intervention = spec.interventions.get(trigger)
            entered_as = (intervention.enters_as if intervention else None) or trigger
            state.outcome = target.on[entered_as]
    if dest in spec.finals:
        state.outcome = dest
    state.state = dest
    return event


async def intervene(
    spec: MachineSpec, state: BuildState, trigger: str, now: float, reason: str | None = None
) -> TransitionEvent:
    """Fire a declared intervention on ``state``, as every transition is recorded; the caller
    persists the state and logs the returned event with it."""
    trigger = str(trigger)
    dest = await fire(spec, state.state, trigger)
    return enter(spec, state, trigger, dest, now, reason)


def event_entry(event: TransitionEvent) -> tuple[str, dict[str, object]]:
    """The event as a store log entry: its kind and its data."""
    return event.type, event.payload()
