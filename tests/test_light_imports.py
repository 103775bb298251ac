"""What loads when: the heavy modules (a database driver, a web server, a terminal UI) load when
used, not when kiln, its CLI or its pytest plugin is imported. Each probe is a new interpreter,
so that nothing this test process loaded before counts."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("psycopg", "starlette", "uvicorn", "rich")


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
