"""No module of kiln reaches into another package's private rooms.

A module may import the private modules of its own package (and of the packages that contain
it), never those of another package: ``kiln.durable._reap`` may use ``kiln.durable._session``
and ``kiln._logging``, not ``kiln.store._base``. And a private name (``_helper``) is nobody's
but its module's: what another module needs gets a public name. Every import counts, those
inside functions and under ``TYPE_CHECKING`` too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import kiln

SRC = Path(kiln.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_of(path: Path) -> str:
    name = _module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _is_module(dotted: str) -> bool:
    relative = Path(*dotted.split(".")[1:]) if "." in dotted else Path()
    base = SRC / relative
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _private_owner(dotted: str) -> str | None:
    """The package whose private room ``dotted`` is, or None when the whole path is public."""
    parts = dotted.split(".")
    for index, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:index])
    return None


def _imports(tree: ast.AST, package: str) -> Iterator[tuple[int, str, str | None]]:
    """(line, module, name) for every import; name is None for ``import module``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            for alias in node.names:
                yield node.lineno, module, alias.name


def _offence(importer: str, package: str, module: str, name: str | None) -> str | None:
    if not module.startswith("kiln"):
        return None
    if name is not None and _is_module(f"{module}.{name}"):
        module, name = f"{module}.{name}", None
    owner = _private_owner(module)
    if owner is not None and not (package == owner or package.startswith(owner + ".")):
        return f"imports {module}, a private module of {owner}"
    private_name = name is not None and name.startswith("_") and not name.startswith("__")
    if private_name and module != importer:
        return f"imports the private name {name} from {module}"
    return None


def offenders() -> list[str]:
    found: list[str] = []
    for path in sorted(SRC.rglob("*.py")):
        importer, package = _module_name(path), _package_of(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, module, name in _imports(tree, package):
            offence = _offence(importer, package, module, name)
            if offence is not None:
                found.append(f"{path.relative_to(SRC.parent)}:{line}: {offence}")
    # One line per import statement, however many names it takes from the same place.
    return list(dict.fromkeys(found))


def test_no_module_imports_another_package_s_private_module_or_a_private_name() -> None:
    found = offenders()
    assert not found, "cross-package private imports:\n" + "\n".join(found)
