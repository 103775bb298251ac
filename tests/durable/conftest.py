"""Fixtures for the durable-build tests: a store on SQLite and on a private PostgreSQL cluster,
and an emulator (in this process, on a loopback port a `kiln` subprocess can reach too)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kiln.emulator import Emulator, EmulatorConfig
from kiln.store import Store, open_store
from kiln.testing import EmulatorClient
from kiln.testing.postgres import PostgresCluster


@pytest.fixture(scope="session")
def durable_postgres() -> Iterator[PostgresCluster]:
    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL for an empty store: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'builds.db'}"
    cluster: PostgresCluster = request.getfixturevalue("durable_postgres")
    return cluster.create_database(f"durable_{uuid.uuid4().hex[:16]}")


@pytest.fixture
def postgres_store_url(durable_postgres: PostgresCluster) -> str:
    return durable_postgres.create_database(f"durable_{uuid.uuid4().hex[:16]}")


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = open_store(store_url)
    yield opened
    await opened.close()


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[EmulatorClient]:
    """A fresh emulator; builds run to their end leave no builder sandbox running."""
    with (
        Emulator(EmulatorConfig(data_dir=tmp_path / "emulator")) as server,
        EmulatorClient(server.url) as client,
    ):
        yield client
