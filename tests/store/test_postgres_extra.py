"""PostgreSQL support is the extra kiln[postgres]: without psycopg, asking for a PostgreSQL store
is a kiln error that says what to install; nothing else needs psycopg.

The missing driver is simulated in a new interpreter (``sys.modules["psycopg"] = None`` makes
every import of it fail), so that this test process's own psycopg does not count."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

URL = "postgresql://kiln@127.0.0.1:1/kiln"
WITHOUT_PSYCOPG = "import sys\nsys.modules['psycopg'] = None\n"


def run_without_psycopg(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_PSYCOPG + code], capture_output=True, text=True
    )


def test_a_postgresql_store_without_psycopg_names_the_extra() -> None:
    done = run_without_psycopg(
        "from kiln.errors import ConfigError\n"
        "from kiln.store import open_store\n"
        "try:\n"
        f"    open_store({URL!r})\n"
        "except ConfigError as error:\n"
        "    print(error.display())\n"
    )
    assert done.returncode == 0, done.stderr
    assert "needs psycopg" in done.stdout
    assert "pip install 'kiln[postgres]'" in done.stdout


def test_the_postgres_store_class_without_psycopg_names_the_extra() -> None:
    done = run_without_psycopg(
        "from kiln.errors import ConfigError\n"
        "try:\n"
        "    from kiln.store import PostgresStore\n"
        "except ConfigError as error:\n"
        "    print(error.display())\n"
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'kiln[postgres]'" in done.stdout


def test_the_cli_without_psycopg_says_what_to_install_without_a_traceback() -> None:
    done = run_without_psycopg(
        f"from kiln.cli import main\nsys.exit(main(['ls', '--store', {URL!r}]))"
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "pip install 'kiln[postgres]'" in done.stderr


def test_the_other_stores_work_without_psycopg(tmp_path: Path) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'builds.db'}"
    done = run_without_psycopg(
        "import asyncio\n"
        "from kiln.store import open_store\n"
        "async def main():\n"
        f"    for url in ('memory://', {sqlite_url!r}):\n"
        "        store = open_store(url)\n"
        "        print(await store.list())\n"
        "        await store.close()\n"
        "asyncio.run(main())\n"
    )
    assert done.returncode == 0, done.stderr
