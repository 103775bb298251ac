"""PostgreSQL support is an extra (``kiln[postgres]``): psycopg is imported when a PostgreSQL
store is asked for, never by ``import kiln.store``, and its absence is a kiln error that says
how to install it."""

from __future__ import annotations

import importlib
from types import ModuleType

from kiln.errors import ConfigError

POSTGRES_EXTRA = "pip install 'kiln[postgres]'"


def import_psycopg(module: str = "psycopg") -> ModuleType:
    """``module`` (psycopg or one of its submodules), or ConfigError naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ConfigError(
            f"a postgresql:// store needs psycopg, which cannot be imported ({error})",
            hint=f"install kiln's PostgreSQL support: {POSTGRES_EXTRA}",
        ) from None
