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


def test_every_public_name_resolves_lazily_to_its_module() -> None:
    """kiln/__init__ imports on first use; its map, __all__ and the typed imports agree."""
    import ast
    import importlib
    from pathlib import Path

    exports = kiln._EXPORTS
    assert set(kiln.__all__) == {*exports, "__version__"}
    for name, module in exports.items():
        assert getattr(kiln, name) is getattr(importlib.import_module(module), name), name
    tree = ast.parse(Path(kiln.__file__).read_text())
    typed = {
        alias.name: node.module
        for block in tree.body
        if isinstance(block, ast.If)
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert typed == exports
