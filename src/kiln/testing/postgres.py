"""A private, throw-away PostgreSQL cluster for tests of the PostgreSQL store.

    with PostgresCluster() as cluster:
        url = cluster.create_database("case_1")   # postgresql:///case_1?host=...&user=postgres

The cluster lives in a temporary directory, listens only on a Unix socket there (no TCP port to
collide with anything), trusts local connections, and is stopped and deleted on exit. initdb
refuses to run as root, so under root the binaries run as the ``postgres`` OS user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

# Where Debian and Ubuntu install the server binaries; they are not always on PATH.
_BIN_DIRS = tuple(Path(f"/usr/lib/postgresql/{v}/bin") for v in (17, 16, 15, 14))
_SUPERUSER = "postgres"
_RUN_AS = "postgres"  # the OS user that runs the server when we are root

# Generous, because a cold initdb on a loaded CI machine takes a while; pg_ctl -w returns as soon
# as the server accepts connections, so this only bounds a broken start.
_START_TIMEOUT_S = 60

# Durability settings a throw-away cluster does not need; they make each test's writes cheap.
_FAST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


class PostgresClusterError(RuntimeError):
    """The test cluster could not be created, started or stopped; carries the tool's output."""


class PostgresCluster:
    """Start a cluster on entry, stop it and delete its files on exit; ``url`` connects to it."""

    def __init__(self, settings: tuple[str, ...] = ()) -> None:
        """``settings``: extra server settings, as ``name=value`` (a benchmark's
        ``shared_preload_libraries=pg_stat_statements``)."""
        self._root: Path | None = None
        self._settings = settings

    @property
    def socket_dir(self) -> Path:
        return self._require_root() / "socket"

    @property
    def url(self) -> str:
        """A URL for the ``postgres`` database as the superuser."""
        return self.database_url(_SUPERUSER)

    def database_url(self, name: str) -> str:
        return f"postgresql:///{name}?host={self.socket_dir}&user={_SUPERUSER}"

    def create_database(self, name: str) -> str:
        """Create an empty database and return its URL."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.database_url(name)

    def start(self) -> None:
        self._root = Path(tempfile.mkdtemp(prefix="kiln-pg-"))
        self.socket_dir.mkdir()
        if os.geteuid() == 0:
            _give_to(self._root, _RUN_AS)
        _run(
            "initdb",
            "-D",
            str(self._root / "data"),
            "-A",
            "trust",
            "-U",
            _SUPERUSER,
            "-E",
            "UTF8",
            "--no-sync",
        )
        self.start_server()

    def start_server(self) -> None:
        """Start the server on the cluster's data (after :meth:`stop_server`, the same data)."""
        root = self._require_root()
        options = " ".join(
            [
                "-c listen_addresses=''",
                f"-c unix_socket_directories='{self.socket_dir}'",
                *(f"-c {setting}" for setting in (*_FAST_SETTINGS, *self._settings)),
            ]
        )
        _run(
            "pg_ctl",
            "-D",
            str(root / "data"),
            "-l",
            str(root / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            str(_START_TIMEOUT_S),
            "start",
            log=root / "server.log",
        )

    def stop_server(self) -> None:
        """Stop the server at once and keep its data: a database outage, for tests of clients
        that must ride one out. :meth:`start_server` ends it."""
        _run("pg_ctl", "-D", str(self._require_root() / "data"), "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        if self._root is None:
            return
        root, self._root = self._root, None
        try:
            # No pid file: the server never started (initdb or the start failed), nothing to stop.
            if (root / "data" / "postmaster.pid").exists():
                # immediate: nothing in a test cluster is worth a clean checkpoint
                _run("pg_ctl", "-D", str(root / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _require_root(self) -> Path:
        if self._root is None:
            raise PostgresClusterError("the cluster is not running; use it inside `with`")
        return self._root


def _give_to(root: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    for path in [root, *root.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _binary(name: str) -> str:
    found = shutil.which(name) or next(
        (str(d / name) for d in _BIN_DIRS if (d / name).is_file()), None
    )
    if found is None:
        raise PostgresClusterError(
            f"{name} not found on PATH or in {', '.join(map(str, _BIN_DIRS))}; install the"
            " PostgreSQL server package"
        )
    return found


def _run(tool: str, *args: str, log: Path | None = None) -> None:
    command = [_binary(tool), *args]
    if os.geteuid() == 0:
        command = ["runuser", "-u", _RUN_AS, "--", *command]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        server_log = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
        raise PostgresClusterError(
            f"{tool} failed with exit code {result.returncode}:\n{result.stdout}{result.stderr}"
            f"{server_log}"
        )
