"""Remote layout, builder argv and start payloads (docs/protocol.md#run-the-builder,
docs/protocol.md#process-payload)."""

from __future__ import annotations

import shlex

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiln.api import process_payload
from kiln.errors import ResponseError
from kiln.machine.protocol import (
    BUILDER_PATH_ENV,
    KEEPALIVE_INTERVAL_S,
    REMOTE_ARCHIVE_PATH,
    REMOTE_BUILD_DIR,
    REMOTE_CONTEXT_DIR,
    REMOTE_METADATA_PATH,
    REMOTE_SPEC_PATH,
    ROOT_USER,
    SANDBOX_TIMEOUT_SECS,
    builder_argv,
    builder_env,
    builder_executable,
)

B = "/var/lib/tensorlake/rootfs-builder/build"


def test_remote_paths_match_the_reference() -> None:
    paths = [
        REMOTE_BUILD_DIR,
        REMOTE_CONTEXT_DIR,
        REMOTE_METADATA_PATH,
    ]
    assert paths == [B, f"{B}/context", f"{B}/metadata.json"]


def test_uploads_go_where_the_sandbox_user_may_write_without_a_root_step() -> None:
    # /tmp: world-writable with the sticky bit in every Linux root filesystem (FHS), so no root
    # mkdir and chmod of the build directory before the PUTs.
    assert [REMOTE_ARCHIVE_PATH, REMOTE_SPEC_PATH] == [
        "/tmp/kiln-context.tar.gz",
        "/tmp/kiln-spec.json",
    ]


def test_keepalive_renews_before_the_sandbox_expires() -> None:
    assert SANDBOX_TIMEOUT_SECS == 300
    assert KEEPALIVE_INTERVAL_S < SANDBOX_TIMEOUT_SECS


def test_bare_builder_name_is_rewritten_to_its_installed_path() -> None:
    # the builder's executable rewritten (docs/protocol.md#run-the-builder)
    assert builder_executable("tl-rootfs-build") == "/usr/local/bin/tl-rootfs-build"
    assert builder_executable("/custom/tl-rootfs-build") == "/custom/tl-rootfs-build"
    assert builder_env() == {"PATH": "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    assert builder_env()["PATH"] == BUILDER_PATH_ENV


def test_builder_argv_appends_spec_and_metadata_paths() -> None:
    assert builder_argv("tl-rootfs-build --verbose 'a b'") == [
        "/usr/local/bin/tl-rootfs-build",
        "--verbose",
        "a b",
        "--spec",
        "/tmp/kiln-spec.json",
        "--metadata-out",
        f"{B}/metadata.json",
    ]


def test_only_the_exact_first_token_is_rewritten() -> None:
    assert builder_argv("tl-rootfs-build-v2")[0] == "tl-rootfs-build-v2"
    assert builder_argv("env tl-rootfs-build")[:2] == ["env", "tl-rootfs-build"]


@pytest.mark.parametrize("command", ["tl-rootfs-build 'unclosed", 'tl-rootfs-build "x'])
def test_unparsable_builder_command_is_a_response_error(command: str) -> None:
    with pytest.raises(ResponseError, match="invalid rootfs builder command returned by platform"):
        builder_argv(command)


@pytest.mark.parametrize("command", ["", "   ", "\n"])
def test_empty_builder_command_is_a_response_error(command: str) -> None:
    with pytest.raises(ResponseError, match="empty rootfs builder command"):
        builder_argv(command)


@given(st.lists(st.text(min_size=1).filter(lambda s: "\x00" not in s), min_size=1, max_size=5))
def test_builder_argv_round_trips_a_quoted_command(words: list[str]) -> None:
    argv = builder_argv(shlex.join(words))
    assert argv[0] == builder_executable(words[0])
    assert argv[1:-4] == words[1:]
    assert argv[-4:] == ["--spec", REMOTE_SPEC_PATH, "--metadata-out", REMOTE_METADATA_PATH]


def test_builder_payload_runs_as_root() -> None:
    # a root payload (docs/protocol.md#process-payload), composed with kiln.api's payload builder
    executable, *args = builder_argv("tl-rootfs-build")
    payload = process_payload(
        executable, args, user=ROOT_USER, env=builder_env(), working_dir=REMOTE_BUILD_DIR
    )
    assert payload == {
        "command": "/usr/local/bin/tl-rootfs-build",
        "args": ["--spec", "/tmp/kiln-spec.json", "--metadata-out", f"{B}/metadata.json"],
        "env": {"PATH": BUILDER_PATH_ENV},
        "working_dir": B,
        "user": "root",
    }


def test_non_root_payload_has_no_user_key() -> None:
    # a non-root payload has no user key (docs/protocol.md#process-payload): a root-made directory
    # would be unwritable to the file API
    payload = process_payload("mkdir", ["-p", "/var/lib/tensorlake/rootfs-builder"])
    assert payload == {"command": "mkdir", "args": ["-p", "/var/lib/tensorlake/rootfs-builder"]}
