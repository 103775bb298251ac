"""Choosing a store: URL forms, the environment, the default location, and keeping passwords out
of messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.errors import UsageError
from kiln.store import (
    MemoryStore,
    PostgresStore,
    SQLiteStore,
    StoreUnavailable,
    default_store_url,
    open_store,
    redact_url,
)

SECRET = "s3cret-Pa55"

# Nothing listens on port 1 on loopback, so connecting fails at once without leaving the machine.
UNREACHABLE = f"postgresql://kiln:{SECRET}@127.0.0.1:1/builds?connect_timeout=2"


def test_memory_url_opens_a_memory_store() -> None:
    assert isinstance(open_store("memory://"), MemoryStore)


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///builds.db", Path("builds.db")),
        ("sqlite:///state/kiln/builds.db", Path("state/kiln/builds.db")),
        ("sqlite:////var/lib/kiln/builds.db", Path("/var/lib/kiln/builds.db")),
    ],
)
def test_sqlite_urls_follow_sqlalchemy(url: str, path: Path) -> None:
    store = open_store(url)
    assert isinstance(store, SQLiteStore) and store.path == path


@pytest.mark.parametrize("url", ["postgresql://u@db.example/kiln", "postgres:///kiln?host=/run"])
def test_postgresql_urls_open_a_postgres_store_without_connecting(url: str) -> None:
    assert isinstance(open_store(url), PostgresStore)


@pytest.mark.parametrize(
    "url",
    ["", "junk", "sqlite://", "sqlite:///", "sqlite://host/x.db", "mysql://u@h/db", "memory:"],
)
def test_other_urls_are_usage_errors_naming_the_accepted_forms(url: str) -> None:
    with pytest.raises(UsageError) as caught:
        open_store(url or "junk")
    assert "sqlite:////absolute/path.db" in caught.value.display()
    assert "postgresql://" in caught.value.display()


def test_the_default_is_sqlite_under_xdg_state_home(tmp_path: Path) -> None:
    env = {"XDG_STATE_HOME": str(tmp_path), "HOME": "/nowhere"}
    assert default_store_url(env) == f"sqlite:///{tmp_path}/kiln/builds.db"
    store = open_store(env=env)
    assert isinstance(store, SQLiteStore) and store.path == tmp_path / "kiln" / "builds.db"


@pytest.mark.parametrize("xdg", [None, "", "relative/state"])
def test_without_a_usable_xdg_state_home_the_default_is_under_home(xdg: str | None) -> None:
    env = {"HOME": "/home/someone"} | ({"XDG_STATE_HOME": xdg} if xdg is not None else {})
    assert default_store_url(env) == "sqlite:////home/someone/.local/state/kiln/builds.db"


def test_kiln_store_env_is_used_and_an_explicit_url_wins(tmp_path: Path) -> None:
    env = {"KILN_STORE": "memory://", "XDG_STATE_HOME": str(tmp_path)}
    assert isinstance(open_store(env=env), MemoryStore)
    assert isinstance(open_store(f"sqlite:///{tmp_path}/x.db", env=env), SQLiteStore)
    assert isinstance(open_store(env=env | {"KILN_STORE": ""}), SQLiteStore)


async def test_the_default_sqlite_store_creates_its_directory(tmp_path: Path) -> None:
    store = open_store(env={"XDG_STATE_HOME": str(tmp_path / "state")})
    try:
        await store.create(id="b-1", name="n", state="prepare", data={})
    finally:
        await store.close()
    assert (tmp_path / "state" / "kiln" / "builds.db").is_file()


def test_redact_url_hides_passwords_in_the_userinfo_and_the_query() -> None:
    assert redact_url(f"postgresql://kiln:{SECRET}@db:5432/x") == "postgresql://kiln:***@db:5432/x"
    assert SECRET not in redact_url(f"postgresql://db/x?user=kiln&password={SECRET}")
    assert redact_url("postgresql://kiln@db/x") == "postgresql://kiln@db/x"
    assert SECRET not in redact_url(f"postgresql://kiln:{SECRET}@[bad/x")


@pytest.mark.parametrize(
    "url",
    [
        f"postgresq://kiln:{SECRET}@db/x",  # a typo in the scheme
        f"mysql://kiln:{SECRET}@db/x",
        f"kiln:{SECRET}@db/x",
    ],
)
def test_a_rejected_url_does_not_echo_its_password(url: str) -> None:
    with pytest.raises(UsageError) as caught:
        open_store(url)
    assert SECRET not in caught.value.display()


async def test_an_unreachable_database_is_reported_without_its_password() -> None:
    store = open_store(UNREACHABLE)
    with pytest.raises(StoreUnavailable) as caught:
        await store.get("b-1")
    await store.close()
    message = caught.value.display()
    assert "127.0.0.1" in message and "kiln:***@" in message
    assert SECRET not in message
    # The driver's own exception is not chained in, so a traceback cannot print it either.
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://kiln:{SECRET}@[::1/x",  # libpq quotes the whole URL back
        f"postgresql://kiln:{SECRET}%zz@db/x",  # libpq quotes the bad token: the password
        f"postgresql://kiln:{SECRET}@db/x?bogus=1",
    ],
)
def test_a_postgresql_url_libpq_refuses_is_a_usage_error_without_its_password(url: str) -> None:
    with pytest.raises(UsageError, match="invalid PostgreSQL URL") as caught:
        open_store(url)
    assert SECRET not in caught.value.display()


async def test_a_store_built_on_a_bad_url_refuses_it_at_first_use() -> None:
    store = PostgresStore(f"postgresql://kiln:{SECRET}@127.0.0.1:1/x?bogus=1")
    with pytest.raises(UsageError, match="bogus") as caught:
        await store.get("b-1")
    await store.close()
    assert SECRET not in caught.value.display()


def test_redact_url_leaves_a_url_without_password_verbatim() -> None:
    for url in ("postgresql:///db?host=/run/pg&user=kiln", "postgresql://kiln@db:5432/x"):
        assert redact_url(url) == url
