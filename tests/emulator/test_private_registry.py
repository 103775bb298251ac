"""``private_registries``: the builder stand-in pulls what the build needs, and an image on a
private registry needs its credentials in spec.json, or the build fails as ``docker pull`` does.
Registry credentials never reach what the emulator stores (issue 11)."""

from __future__ import annotations

import base64
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kiln.emulator import Emulator, EmulatorConfig
from kiln.emulator._registry import needed_images, pull_refusal, registry_of
from kiln.testing import EmulatorClient
from support.wire import (
    AUTH,
    BUILD_DIR,
    CREATE_BODY,
    SANDBOXES,
    SandboxDriver,
    prepare,
    run_builder,
    stage_build,
)

HOST = "registry.example.com"
USER, PASSWORD = "alice", "s3cret-registry-password"
PRIVATE = {HOST: (USER, PASSWORD)}
DOCKERFILE = f"FROM {HOST}/team/base:1.0 AS build\nRUN make\nFROM python:3.12-slim\n" + (
    "COPY --from=build /out /app\n"
)


def docker_config(**entry: str) -> str:
    return json.dumps({"auths": {HOST: entry}})


GOOD_AUTH = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    config = EmulatorConfig(data_dir=tmp_path_factory.mktemp("data"), private_registries=PRIVATE)
    with Emulator(config) as emu:
        yield emu


@pytest.fixture
def sandbox(private: Emulator) -> Iterator[SandboxDriver]:
    with httpx.Client(base_url=private.url, headers=AUTH, timeout=30) as http:
        created = http.post(SANDBOXES, json=CREATE_BODY).json()
        yield SandboxDriver(http, created["sandbox_id"])


def build(sandbox: SandboxDriver, **spec: str) -> tuple[dict[str, Any], list[str]]:
    prepared = prepare(sandbox.http, "img", DOCKERFILE)
    stage_build(sandbox, prepared, DOCKERFILE, {"a.txt": b"A"}, **spec)
    info, events = run_builder(sandbox)
    return info, [e["line"] for e in events]


def test_docker_rules_for_registries_and_needed_images() -> None:
    assert registry_of("python:3.12") == "docker.io"
    assert registry_of("library/python") == "docker.io"
    assert registry_of("localhost/x") == "localhost"
    assert registry_of(f"{HOST}:5000/x/y:1") == f"{HOST}:5000"
    assert needed_images(DOCKERFILE, []) == [f"{HOST}/team/base:1.0", "python:3.12-slim"]
    assert needed_images("FROM tmpl\nRUN --mount=type=cache,from=ghcr.io/a/b x\n", ["tmpl"]) == [
        "ghcr.io/a/b"
    ]
    assert pull_refusal("python:3.12", PRIVATE, None) is None


def test_a_private_image_without_credentials_fails_with_dockers_message(
    sandbox: SandboxDriver,
) -> None:
    info, lines = build(sandbox)
    assert info["exit_code"] == 1
    assert (
        f"Error response from daemon: pull access denied for {HOST}/team/base, repository does "
        "not exist or may require 'docker login'"
    ) in lines[-1]


def test_wrong_credentials_are_unauthorized(sandbox: SandboxDriver) -> None:
    wrong = base64.b64encode(f"{USER}:nope".encode()).decode()
    info, lines = build(sandbox, dockerConfigJson=docker_config(auth=wrong))
    assert info["exit_code"] == 1
    assert "unauthorized: incorrect username or password" in lines[-1]
    assert PASSWORD not in "\n".join(lines)


@pytest.mark.parametrize(
    "entry", [{"auth": GOOD_AUTH}, {"identitytoken": PASSWORD}], ids=["auth", "identitytoken"]
)
def test_matching_credentials_pull_and_never_reach_the_snapshot(
    sandbox: SandboxDriver, private: Emulator, entry: dict[str, str]
) -> None:
    info, lines = build(sandbox, dockerConfigJson=docker_config(**entry))
    assert info["exit_code"] == 0, lines
    assert f"pulling {HOST}/team/base:1.0" in lines
    metadata = json.loads(sandbox.get(f"{BUILD_DIR}/metadata.json").content)
    with EmulatorClient(private.url) as admin:
        snapshot = admin.blob(metadata["snapshot_uri"])
    with tarfile.open(fileobj=io.BytesIO(snapshot)) as archive:
        member = archive.extractfile("spec.json")
        assert member is not None
        stored = json.loads(member.read())
    assert "dockerConfigJson" not in stored
    secret = next(iter(entry.values())).encode()
    assert not [p for p in Path(private.data_dir).rglob("*.tlsnap") if secret in p.read_bytes()]
