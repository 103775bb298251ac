"""Render a declared machine as a Mermaid state diagram (``kiln diagram`` → diagrams/build.mmd),
and as Graphviz DOT (which ``kiln diagram`` turns into build.svg when ``dot`` is installed).

Both draw every edge a handler's outcome takes and every intervention (the edges fired on a
build nobody runs); an intervention from every state that is not final leaves a node of its own.

The output depends only on the declaration, in declaration order, so the committed file can be
compared with a fresh rendering to prove it is not stale.
"""

from __future__ import annotations

from kiln.machine._outcome import Trigger
from kiln.machine._spec import ANY_STATE, MachineSpec

INDENT = "    "
# States that may hold a builder sandbox are shaded: every non-success edge out of them must
# pass through cleanup, which the picture makes easy to check by eye.
SANDBOX_CLASS = "holds_sandbox"
SANDBOX_STYLE = "fill:#fff3d6,stroke:#b7791f"
# The same shading in Graphviz terms, so both pictures tell the same story.
DOT_SANDBOX_ATTRS = 'style=filled, fillcolor="#fff3d6", color="#b7791f"'
# The source node of an intervention from every state that is not final: its id and its label.
ANY_NODE = "any_open_state"
ANY_LABEL = "any state not final"
# Interventions are drawn dashed in Graphviz (Mermaid's state diagrams have no edge styles).
DOT_INTERVENTION_ATTRS = "style=dashed"


def edge_label(spec: MachineSpec, source: str, trigger: str) -> str:
    """The trigger; a retry edge also shows its budget, and when the budget counts only the
    failures without progress (the attempt count starts again after progress)."""
    if trigger != Trigger.RETRY:
        return trigger
    state = spec.states[source]
    budget = f"{trigger} max {state.attempts}"
    return f"{budget} without progress" if state.progress_resets_attempts else budget


def render_mermaid(spec: MachineSpec) -> str:
    """The machine as Mermaid ``stateDiagram-v2`` text, ending with a newline."""
    lines = [f"%% generated from states/{spec.name}.toml by `kiln diagram`; do not edit", ""]
    lines.append("stateDiagram-v2")
    lines.append(f"{INDENT}[*] --> {spec.initial}")
    lines += [
        f"{INDENT}{source} --> {dest} : {edge_label(spec, source, trigger)}"
        for source, trigger, dest in spec.edges()
    ]
    interventions = spec.intervention_edges()
    if any(source == ANY_STATE for source, _, _ in interventions):
        lines.append(f'{INDENT}state "{ANY_LABEL}" as {ANY_NODE}')
    lines += [
        f"{INDENT}{_node(source)} --> {dest} : {trigger}" for source, trigger, dest in interventions
    ]
    lines += [f"{INDENT}{final} --> [*]" for final in spec.finals]
    holding = [state.name for state in spec.states.values() if state.holds_sandbox]
    if holding:
        lines.append(f"{INDENT}classDef {SANDBOX_CLASS} {SANDBOX_STYLE}")
        lines.append(f"{INDENT}class {','.join(holding)} {SANDBOX_CLASS}")
    return "\n".join(lines) + "\n"


def render_dot(spec: MachineSpec) -> str:
    """The machine as a Graphviz digraph, ending with a newline."""
    lines = [f"// generated from states/{spec.name}.toml by `kiln diagram`; do not edit"]
    lines.append(f"digraph {spec.name} {{")
    lines.append(f"{INDENT}rankdir=TB;")
    lines.append(f"{INDENT}node [shape=box, style=rounded];")
    lines.append(f'{INDENT}"[*]" [shape=point];')
    lines += [f'{INDENT}"{final}" [shape=doublecircle];' for final in spec.finals]
    lines += [
        f'{INDENT}"{state.name}" [{DOT_SANDBOX_ATTRS}];'
        for state in spec.states.values()
        if state.holds_sandbox
    ]
    lines.append(f'{INDENT}"[*]" -> "{spec.initial}";')
    lines += [
        f'{INDENT}"{source}" -> "{dest}" [label="{edge_label(spec, source, trigger)}"];'
        for source, trigger, dest in spec.edges()
    ]
    lines += [
        f'{INDENT}"{_dot_node(source)}" -> "{dest}" [label="{trigger}", {DOT_INTERVENTION_ATTRS}];'
        for source, trigger, dest in spec.intervention_edges()
    ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _node(source: str) -> str:
    return ANY_NODE if source == ANY_STATE else source


def _dot_node(source: str) -> str:
    return ANY_LABEL if source == ANY_STATE else source
