"""Fixtures shared by the whole suite (loaded by ``tests/conftest.py``).

One PostgreSQL cluster per session (``postgres_cluster``; each test takes a fresh database of
its own); the emulators shared by a session (``emulator_pool``); and the defaults for builds
run against an emulator and a store: ``emulator``, an emulator of the test's own, and
``store``, an empty store on SQLite and then on PostgreSQL. A directory whose tests need
another flavour (tests/machine: a shared emulator reset per test; tests/store: every backend
on a fake clock; tests/emulator: the server object itself) overrides the name in its conftest.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kiln.emulator import Emulator, EmulatorConfig
from kiln.store import Store, open_store
from kiln.testing import EmulatorClient
from kiln.testing.postgres import PostgresCluster
from support.machine import EmulatorPool


def fresh_database(cluster: PostgresCluster, prefix: str = "test") -> str:
    """A new, empty database on ``cluster``; its URL."""
    return cluster.create_database(f"{prefix}_{uuid.uuid4().hex[:16]}")


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """The session's private PostgreSQL cluster, started by the first test that needs it."""
    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture
def postgres_store_url(postgres_cluster: PostgresCluster) -> str:
    """A fresh, empty database for one test."""
    return fresh_database(postgres_cluster)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL for an empty store: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'builds.db'}"
    url: str = request.getfixturevalue("postgres_store_url")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = open_store(store_url)
    yield opened
    await opened.close()


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[EmulatorClient]:
    """An emulator of this test's own, in this process, on a loopback port a `kiln` subprocess
    reaches too."""
    with (
        Emulator(EmulatorConfig(data_dir=tmp_path / "emulator")) as server,
        EmulatorClient(server.url) as client,
    ):
        yield client


@pytest.fixture(scope="session")
def emulator_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorPool]:
    """In-process emulators shared by the session, one per configuration (reset per test)."""
    pool = EmulatorPool(Path(tmp_path_factory.mktemp("emulators")))
    try:
        yield pool
    finally:
        pool.close()
