"""Choosing a store from a URL, the environment, or the default."""

from __future__ import annotations

import os
from collections.abc import Mapping

from kiln.store._base import Store
from kiln.store._memory import MemoryStore
from kiln.store._psycopg import import_psycopg
from kiln.store._sqlite import SQLiteStore
from kiln.store._urls import STORE_ENV, default_store_url, parse_store_url


def open_store(url: str | None = None, *, env: Mapping[str, str] | None = None) -> Store:
    """The store at ``url``, else at ``$KILN_STORE``, else the default SQLite file.

    Nothing is opened yet: the file or the database connection (and its migrations) come with the
    first operation, so this never blocks. A bad URL is a UsageError naming the accepted forms.
    """
    env = os.environ if env is None else env
    location = parse_store_url(url or env.get(STORE_ENV) or default_store_url(env))
    if location.kind == "memory":
        return MemoryStore()
    if location.kind == "sqlite":
        assert location.path is not None
        return SQLiteStore(location.path)
    assert location.url is not None
    import_psycopg()
    from kiln.store._postgres import PostgresStore

    return PostgresStore(location.url)
