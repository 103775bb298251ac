"""What loads when: the heavy modules (a database driver, a web server, a terminal UI) load when
used, not when kiln, its CLI or its pytest plugin is imported. Each probe is a new interpreter,
so that nothing this test process loaded before counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HEAVY = ("psycopg", "starlette", "uvicorn", "rich", "aiohttp")


def loaded_after(statement: str, watched: tuple[str, ...]) -> list[str]:
    """The modules of ``watched`` (and their submodules) loaded by running ``statement``."""
    probe = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    return sorted({w for w in watched for m in loaded if m == w or m.startswith(w + ".")})


def test_reading_the_emulator_s_configuration_loads_no_server() -> None:
    statement = "from kiln.emulator import PROFILES, DEFAULT_HOST, EmulatorConfig"
    assert loaded_after(statement, ("starlette", "uvicorn")) == []


def test_importing_kiln_loads_none_of_the_heavy_modules() -> None:
    assert loaded_after("import kiln", HEAVY) == []


def test_the_library_loads_no_database_driver_and_no_server() -> None:
    """psycopg is the kiln[postgres] extra: a store of another kind, a build, a worker need none
    of it; and only the emulator's server needs Starlette and uvicorn."""
    statement = "import kiln.builds, kiln.store, kiln.durable"
    assert loaded_after(statement, ("psycopg", "starlette", "uvicorn")) == []


PROBE = """
import sys

SERVER_AND_STORES = {"kiln.store", "kiln.emulator._server", "starlette", "uvicorn", "psycopg"}


def test_a_test_that_uses_no_kiln_fixture_pays_for_none():
    assert SERVER_AND_STORES & set(sys.modules) == set()


def test_the_stores_load_with_the_fixture_that_uses_them(kiln_store):
    assert "kiln.store" in sys.modules
"""


def test_the_pytest_plugin_loads_the_emulator_and_the_stores_only_for_its_fixtures(
    tmp_path: Path,
) -> None:
    """pytest loads kiln's plugin in every run of any project where kiln is installed: a run of
    tests that use none of its fixtures must not start paying for the emulator or the stores."""
    (tmp_path / "test_probe.py").write_text(PROBE)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("PYTEST")},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout, done.stdout


def test_the_plugin_module_loads_neither_server_nor_stores() -> None:
    loaded = loaded_after(
        "import kiln.testing.plugin", ("kiln.store", "kiln.emulator._server", *HEAVY)
    )
    assert loaded == []


def test_the_cli_s_commands_load_no_database_driver_and_no_server_until_they_run() -> None:
    """Every `kiln` run builds the parser of every command first (`kiln --help`, `kiln plan`):
    that costs neither psycopg nor the emulator's server."""
    statement = "import kiln.cli; kiln.cli.build_parser()"
    assert loaded_after(statement, ("psycopg", "starlette", "uvicorn")) == []
