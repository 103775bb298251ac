"""The code against the declaration: no module of the orchestration side spells a state, trigger
or final-state name of a declared machine; it reads them from states/ (issue 15)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from kiln.machine import load_machine_spec
from support.paths import REPO

SRC = REPO / "src" / "kiln"
STATES = REPO / "states"
# The modules that drive, persist, show and test the machine. api/ and emulator/ speak the wire,
# where "complete" or "upload" are words of the protocol that merely equal a state's name.
SCANNED = ("machine", "durable", "builds", "cli", "testing")
# (module relative to src/kiln, literal): each one is a word of another vocabulary that happens
# to equal a name of the machine.
ALLOWED = {
    # The prepared spec's signed block is called "upload" by the platform (reference, sign).
    ("machine/protocol/_spec.py", "upload"),
    # `kiln cancel` is a CLI command; its name is the user's word, not the trigger's.
    ("cli/durable.py", "cancel"),
}
# (module, callable): the first argument of these calls is a name of another vocabulary.
ALLOWED_FIRST_ARGUMENTS = {
    # A fault target is named after the request it faults ("prepare" is the POST of prepare,
    # "complete" the POST of complete), a public name of kiln.testing; its phases are the
    # handlers of the states that make it, not spelled.
    ("testing/_faults.py", "Target"),
}


def _declared_names() -> set[str]:
    """Every state, final state and trigger of every declared machine."""
    names: set[str] = set()
    for path in sorted(STATES.glob("*.toml")):
        spec = load_machine_spec(path)
        names |= set(spec.states) | set(spec.finals) | set(spec.triggers)
    return names


def _modules() -> Iterator[Path]:
    for name in SCANNED:
        yield from sorted((SRC / name).rglob("*.py"))


def _docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring nodes: prose may name a state."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _first_arguments(tree: ast.AST, module: str) -> set[int]:
    """The ids of the first arguments of the calls ALLOWED_FIRST_ARGUMENTS names in ``module``."""
    callables = {name for allowed, name in ALLOWED_FIRST_ARGUMENTS if allowed == module}
    return {
        id(node.args[0])
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in callables
        and node.args
    }


def _literals(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _docstrings(tree) | _first_arguments(tree, path.relative_to(SRC).as_posix())
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in skipped
        ):
            yield node.lineno, node.value


def test_the_code_names_no_state_trigger_or_final_of_the_declaration() -> None:
    names = _declared_names()
    found = [
        f"{path.relative_to(SRC)}:{line}: {value!r}"
        for path in _modules()
        for line, value in _literals(path)
        if value in names and (path.relative_to(SRC).as_posix(), value) not in ALLOWED
    ]
    assert found == [], "read these names from the declaration (states/*.toml):\n" + "\n".join(
        found
    )


def test_the_allowlist_has_no_stale_entry() -> None:
    names = _declared_names()
    for module, value in ALLOWED:
        assert value in names, (module, value)
        assert value in {v for _, v in _literals(SRC / module)}, (module, value)
