"""Whatever a client sends, the emulator answers with a JSON error it chose, never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln.emulator import Emulator, EmulatorConfig
from support.wire import AUTH, CREATE_BODY, SANDBOXES

KEYS = [
    "name", "dockerfile", "baseImage", "public", "rootfsNodeKind", "parentTemplate",
    "additionalLocalImages", "templateId", "snapshotId", "snapshotUri", "snapshotFormatVersion",
    "snapshotSizeBytes", "rootfsDiskBytes", "image", "resources", "cpus", "memory_mb", "disk_mb",
    "timeout_secs", "command", "args", "user", "env", "working_dir", "timeout", "target", "op",
    "kind", "rel_path", "uri", "multipart_hint", "max_parts", "part_size_bytes", "exit_code",
]  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner, max_size=5)
    ),
    max_leaves=12,
)
BODIES = st.dictionaries(st.sampled_from(KEYS), JSON, max_size=6) | JSON
POSTS = [
    "/platform/v1/sandbox-template-builds",
    "/platform/v1/sandbox-template-builds/{build}/complete",
    SANDBOXES,
    "/api/v1/processes",
    "/api/v1/processes/run",
    "/api/v1/blob/sign",
    "/_emulator/builder",
]


@pytest.fixture(scope="module")
def target(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[httpx.Client, dict[str, str]]]:
    data_dir = tmp_path_factory.mktemp("robust")
    with Emulator(EmulatorConfig(data_dir=data_dir)) as emu:
        http = httpx.Client(base_url=emu.url, headers=AUTH, timeout=30)
        sandbox_id = http.post(SANDBOXES, json={**CREATE_BODY, "timeout_secs": 3600}).json()
        build = http.post(POSTS[0], json={"name": "n", "dockerfile": "FROM a", "baseImage": "a"})
        ids = {"build": build.json()["buildId"], "sandbox": sandbox_id["sandbox_id"]}
        yield http, ids


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(path=st.sampled_from(POSTS), body=BODIES)
def test_random_bodies_never_cause_a_server_error(
    target: tuple[httpx.Client, dict[str, str]], path: str, body: Any
) -> None:
    http, ids = target
    headers = {"Host": f"{ids['sandbox']}.local"} if path.startswith("/api/") else {}
    response = http.post(path.format(**ids), json=body, headers=headers)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert set(response.json()) == {"error", "code"}


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(path=st.text(max_size=40))
def test_random_file_paths_are_confined_or_refused(
    target: tuple[httpx.Client, dict[str, str]], path: str
) -> None:
    http, ids = target
    headers = {"Host": f"{ids['sandbox']}.local"}
    response = http.put("/api/v1/files", params={"path": path}, content=b"x", headers=headers)
    assert response.status_code < 500, response.text


@pytest.mark.parametrize(
    "raw", ['{"image": "i", "resources": {"cpus": NaN}}', '{"image": "i", "timeout_secs": 1e400}']
)
def test_non_finite_numbers_are_refused(
    target: tuple[httpx.Client, dict[str, str]], raw: str
) -> None:
    http, _ids = target
    response = http.post(SANDBOXES, content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]


def test_builder_exit_code_must_fit_a_byte(target: tuple[httpx.Client, dict[str, str]]) -> None:
    http, _ids = target
    response = http.post("/_emulator/builder", json={"exit_code": 256})
    assert response.status_code == 400
    assert "exit_code" in response.json()["error"]
