"""``pytest -p kiln.testing`` in a project that only installs kiln: examples/embedding's own
suite, run in a subprocess with this interpreter (where kiln is installed, as it would be there)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.paths import EXAMPLES

EXAMPLE = EXAMPLES / "embedding"
# The example starts an emulator and runs a few builds; a hung run should fail, not stall CI.
TIMEOUT_S = 120


def run_example(
    tmp_path: Path, *args: str, autoload: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        # Keep the example's directory clean: no bytecode, no hypothesis storage in the checkout.
        "PYTHONDONTWRITEBYTECODE": "1",
        "HYPOTHESIS_STORAGE_DIRECTORY": str(tmp_path / "hypothesis"),
    }
    env.pop("PYTEST_ADDOPTS", None)
    if not autoload:
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


@pytest.mark.slow
def test_the_example_project_passes_with_the_plugin(tmp_path: Path) -> None:
    result = run_example(tmp_path, "-p", "kiln.testing")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout


@pytest.mark.slow
def test_the_example_project_passes_against_the_cloud_profile(tmp_path: Path) -> None:
    # The plugin's emulator with pending sandboxes, cut streams and 411s (timings scaled down):
    # what a project embedding kiln gets from `--kiln-emulator-profile cloud`.
    result = run_example(tmp_path, "-p", "kiln.testing", "--kiln-emulator-profile", "cloud")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout


@pytest.mark.slow
def test_the_plugin_alone_provides_the_fixtures(tmp_path: Path) -> None:
    """With entry-point autoloading off, ``-p kiln.testing`` is what brings the fixtures."""
    without = run_example(tmp_path, "-p", "pytest_asyncio.plugin", autoload=False)
    assert "fixture 'kiln_emulator' not found" in without.stdout
    loaded = run_example(
        tmp_path, "-p", "kiln.testing", "-p", "pytest_asyncio.plugin", autoload=False
    )
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
