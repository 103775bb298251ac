"""Several emulators (several processes) on one data directory lose nothing.

Concurrent ``kiln build`` processes against the embedded default each start an emulator on the
same directory: three builds printed "registered" and ``templates.json`` kept two (issue 10).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from kiln.emulator import Emulator, EmulatorConfig
from support.paths import HELLO
from support.processes import kiln_argv, kiln_env
from support.wire import AUTH, BY_NAME, CREATE_BODY, SANDBOXES, SandboxDriver, build_template

BUILDS = 3
BUILD_TIMEOUT_S = 300


def test_emulators_sharing_a_data_dir_keep_every_template(tmp_path: Path) -> None:
    configs = [EmulatorConfig(data_dir=tmp_path) for _ in range(BUILDS)]
    with Emulator(configs[0]) as a, Emulator(configs[1]) as b, Emulator(configs[2]) as c:
        clients = [httpx.Client(base_url=e.url, headers=AUTH, timeout=30) for e in (a, b, c)]
        # Interleaved: each emulator started before any of them registered anything.
        for number, client in enumerate(clients):
            build_template(client, f"r{number}", "FROM a\n")
        for client in clients:
            for number in range(BUILDS):
                assert client.get(f"{BY_NAME}r{number}").status_code == 200
    names = set(json.loads((tmp_path / "templates.json").read_text()))
    assert names == {f"r{n}" for n in range(BUILDS)}


def test_a_second_emulator_leaves_the_first_ones_sandboxes_alone(tmp_path: Path) -> None:
    with Emulator(EmulatorConfig(data_dir=tmp_path)) as first:
        http = httpx.Client(base_url=first.url, headers=AUTH, timeout=30)
        sandbox = SandboxDriver(http, http.post(SANDBOXES, json=CREATE_BODY).json()["sandbox_id"])
        assert sandbox.put("/tmp/kept", b"still here").status_code == 200
        with Emulator(EmulatorConfig(data_dir=tmp_path)):
            assert sandbox.get("/tmp/kept").content == b"still here"
    # Stopped emulators leave no sandbox files behind.
    assert list((tmp_path / "sandboxes").iterdir()) == []


@pytest.mark.slow
def test_concurrent_kiln_builds_on_the_embedded_default_register_every_image(
    tmp_path: Path,
) -> None:
    # Several `kiln build --name rN &` on the embedded emulator's default data dir.
    env = kiln_env(tmp_path)
    processes = [
        subprocess.Popen(
            kiln_argv("build", str(HELLO), "--name", f"r{n}", "--json"),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(BUILDS)
    ]
    for process in processes:
        out, err = process.communicate(timeout=BUILD_TIMEOUT_S)
        assert process.returncode == 0, out + err
    templates = json.loads(
        (tmp_path / "state" / "kiln" / "emulator" / "templates.json").read_text()
    )
    assert set(templates) == {f"r{n}" for n in range(BUILDS)}
