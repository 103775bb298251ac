"""Every error kiln raises on purpose is defined in kiln.errors and exported from it and from
kiln: one module to read for the whole hierarchy, one place to import any of it from."""

from __future__ import annotations

import importlib
import pkgutil

import kiln
import kiln.errors
from kiln.errors import KilnError

# Running them starts the CLI.
ENTRY_POINTS = ("kiln.__main__",)


def every_kiln_error() -> set[type[KilnError]]:
    """Every KilnError subclass defined in any module of kiln (all of them imported first)."""
    for module in pkgutil.walk_packages(kiln.__path__, "kiln."):
        if module.name not in ENTRY_POINTS:
            importlib.import_module(module.name)
    found: set[type[KilnError]] = set()
    pending: list[type[KilnError]] = [KilnError]
    while pending:
        cls = pending.pop()
        if cls.__module__.split(".")[0] == "kiln" and cls not in found:
            found.add(cls)
            pending.extend(cls.__subclasses__())
    return found


def test_every_kiln_error_is_defined_in_kiln_errors_and_exported() -> None:
    errors = every_kiln_error()
    elsewhere = sorted(
        f"{e.__module__}.{e.__qualname__}" for e in errors if e.__module__ != "kiln.errors"
    )
    assert elsewhere == [], "defined outside kiln.errors"
    names = {error.__name__ for error in errors}
    assert names - set(kiln.errors.__all__) == set(), "missing from kiln.errors.__all__"
    assert names - set(kiln.__all__) == set(), "missing from kiln.__all__"
    for name in kiln.errors.__all__:
        assert getattr(kiln, name) is getattr(kiln.errors, name)
