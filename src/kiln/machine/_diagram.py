"""Render the declared machine as a Mermaid state diagram (``kiln diagram`` → diagrams/build.mmd),
and as Graphviz DOT (which ``kiln diagram`` turns into build.svg when ``dot`` is installed).

The output depends only on the declaration, in declaration order, so the committed file can be
compared with a fresh rendering to prove it is not stale.
"""

from __future__ import annotations

from kiln.machine._spec import MachineSpec

INDENT = "    "
# States that may hold a builder sandbox are shaded: every non-success edge out of them must
# pass through cleanup, which the picture makes easy to check by eye.
SANDBOX_CLASS = "holds_sandbox"
SANDBOX_STYLE = "fill:#fff3d6,stroke:#b7791f"
# The same shading in Graphviz terms, so both pictures tell the same story.
DOT_SANDBOX_ATTRS = 'style=filled, fillcolor="#fff3d6", color="#b7791f"'


def edge_label(spec: MachineSpec, source: str, trigger: str) -> str:
    """The trigger; a retry edge also shows its budget, and when the budget counts only the
    failures without progress (the attempt count starts again after progress)."""
    if trigger != "retry":
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
    lines.append("}")
    return "\n".join(lines) + "\n"
