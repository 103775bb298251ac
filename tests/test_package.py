import subprocess
import sys

import kiln
from kiln.errors import BuildFailed, DockerfileError, KilnError


def test_version_is_exposed() -> None:
    assert isinstance(kiln.__version__, str) and kiln.__version__


def test_dockerfile_error_names_the_line() -> None:
    error = DockerfileError(7, "FROM must include a base image", hint="write FROM <image>")
    assert str(error) == "line 7: FROM must include a base image"
    assert "hint: write FROM" in error.display()
    assert isinstance(error, KilnError)


def test_build_failed_names_sandbox_and_build() -> None:
    error = BuildFailed(
        RuntimeError("boom"),
        sandbox_id="rtmmkcw33uvsbep6hn03u",
        build_id="sandbox_template_build_123",
    )
    text = str(error)
    assert "boom" in text
    assert "builder sandbox: rtmmkcw33uvsbep6hn03u" in text
    assert "build: sandbox_template_build_123" in text


def test_cli_without_command_is_a_usage_error() -> None:
    result = subprocess.run([sys.executable, "-m", "kiln"], capture_output=True, text=True)
    assert result.returncode == 2
