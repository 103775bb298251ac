"""`kiln plan`: human and JSON output, imports, errors and exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kiln.cli import main

JSON_KEYS = {
    "name",
    "base_image",
    "base_image_is_internal_stage",
    "additional_image_references",
    "unresolvable_image_references",
    "ignored_instructions",
    "import_image_reference",
    "context",
    "key",
    "warnings",
}
MULTISTAGE = """\
# syntax=docker/dockerfile:1
ARG PY=3.12
ARG NODEF
FROM golang:1.22 AS build
RUN --mount=type=cache,target=/root/.cache \\
    # comment inside the continuation
    go build -o /out/app .
FROM python:${PY}-slim
COPY --from=build /out/app /app
COPY --from=busybox:1.36 /bin/busybox /bin/busybox
COPY --from=tool@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa /t /t
RUN <<EOF
echo hi
EOF
EXPOSE 8080
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "shop"
    root.mkdir()
    (root / "Dockerfile").write_text(MULTISTAGE)
    (root / "main.go").write_text("package main\n")
    return root


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, Any]:
    assert main(argv) == 0
    payload: dict[str, Any] = json.loads(capsys.readouterr().out)
    return payload


def test_json_has_exactly_the_documented_keys(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = _json(capsys, ["plan", str(project / "Dockerfile"), "--json"])
    assert set(payload) == JSON_KEYS
    assert payload["name"] == "shop"
    assert payload["base_image"] == "python:3.12-slim"
    assert payload["base_image_is_internal_stage"] is False
    assert payload["additional_image_references"] == ["golang:1.22", "busybox:1.36"]
    assert payload["unresolvable_image_references"] == [
        {"line": 11, "reference": "tool@sha256:" + "a" * 64, "reason": "digest_pin"}
    ]
    assert payload["ignored_instructions"] == [{"line": 15, "keyword": "EXPOSE"}]
    assert payload["import_image_reference"] is None
    assert len(payload["warnings"]) == 2


def test_json_context_summary(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    context = _json(capsys, ["plan", str(project / "Dockerfile"), "--json"])["context"]
    assert set(context) == {"dir", "files", "bytes", "digest"}
    assert context["dir"] == str(project)
    assert context["files"] == 2
    assert context["bytes"] == len(MULTISTAGE) + len("package main\n")
    assert context["digest"].startswith("sha256:")


def test_context_and_name_options(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "ctx"
    other.mkdir()
    (other / "a.txt").write_text("a")
    argv = ["plan", str(project / "Dockerfile"), "--context", str(other), "--name", "custom"]
    payload = _json(capsys, [*argv, "--json"])
    assert payload["name"] == "custom"
    assert payload["context"]["dir"] == str(other)


def test_default_dockerfile_is_in_the_current_directory(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(project)
    assert _json(capsys, ["plan", "--json"])["name"] == "shop"


def test_human_output_is_a_summary_with_warnings(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", str(project / "Dockerfile")]) == 0
    out = capsys.readouterr().out
    assert "shop" in out
    assert "python:3.12-slim" in out
    assert "golang:1.22, busybox:1.36" in out
    assert out.count("warning: ") == 2
    assert "EXPOSE" in out
    assert "tool@sha256:" in out


def test_import_json(capsys: pytest.CaptureFixture[str]) -> None:
    payload = _json(capsys, ["plan", "--import", "ghcr.io/org/app:v1", "--json"])
    assert set(payload) == JSON_KEYS
    assert payload["name"] == "app"
    assert payload["import_image_reference"] == "ghcr.io/org/app:v1"
    assert payload["base_image"] == "ghcr.io/org/app:v1"
    assert payload["context"] is None
    assert payload["additional_image_references"] == []
    assert payload["warnings"] == []


def test_import_human_with_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--import", "ubuntu:24.04", "--name", "mine"]) == 0
    out = capsys.readouterr().out
    assert "mine" in out
    assert "ubuntu:24.04" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["plan", "--import", "   "],
        ["plan", "Dockerfile", "--import", "ubuntu"],
        ["plan", "--import", "ubuntu", "--context", "."],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "kiln: error:" in captured.err


def test_dockerfile_error_exits_2_with_line_and_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("# base\n\n\n\n\n\nFROM\n")
    assert main(["plan", str(dockerfile), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "line 7: FROM must include a base image" in captured.err
    assert "hint:" in captured.err


def test_missing_dockerfile_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(tmp_path / "Dockerfile")]) == 2
    assert "Dockerfile not found" in capsys.readouterr().err


def test_missing_context_exits_2(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", str(project / "Dockerfile"), "--context", str(project / "missing")]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "missing" in captured.err


def test_plan_takes_build_path_and_docker_options(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(project)
    payload = _json(capsys, ["plan", ".", "--target", "build", "-t", "gopher", "--json"])
    assert (payload["name"], payload["base_image"]) == ("gopher", "golang:1.22")
    assert payload["additional_image_references"] == []
    payload = _json(capsys, ["plan", "--build-arg", "PY=3.13", "--json"])
    assert payload["base_image"] == "python:3.13-slim"


def test_plan_import_takes_no_dockerfile_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--import", "ubuntu", "--target", "x"]) == 2
    assert "--import takes no PATH" in capsys.readouterr().err
