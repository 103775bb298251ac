"""The builder's one process: the shell list kiln sends and how its output is read back."""

from __future__ import annotations

import shlex

from kiln.machine.protocol import (
    REMOTE_ARCHIVE_PATH,
    REMOTE_CONTEXT_DIR,
    REMOTE_METADATA_PATH,
    REMOTE_SPEC_PATH,
    ScriptReader,
    builder_steps,
    directory_step,
    extraction_steps,
    marker_prefix,
    shell_argv,
    step_exit_code,
)

BUILDER = ["/usr/local/bin/tl-rootfs-build", "--spec", REMOTE_SPEC_PATH]
PREFIX = marker_prefix("b1")


def test_the_shell_list_announces_each_step_and_marks_the_end() -> None:
    steps = [directory_step(), *extraction_steps(), *builder_steps(BUILDER)]
    command, flag, script = shell_argv("b1", steps)
    assert (command, flag) == ("/bin/sh", "-c")
    words = [shlex.split(part) for part in script.split(" && ")]
    announced = [w[1].removeprefix(PREFIX) for w in words if w[0] == "echo"]
    assert announced == ["mkdir", "tar", "rm", BUILDER[0], "rm", "cat", "end"]
    run = [w for w in words if w[0] != "echo"]
    assert run[1] == [
        "tar",
        "-xzf",
        REMOTE_ARCHIVE_PATH,
        "-C",
        REMOTE_CONTEXT_DIR,
        "--no-same-owner",
    ]
    assert run[3] == BUILDER
    assert run[4] == ["rm", "-f", REMOTE_SPEC_PATH], "the spec holds credentials"
    assert run[5] == ["cat", REMOTE_METADATA_PATH]


def _read(lines: list[tuple[str, str]]) -> tuple[ScriptReader, list[str]]:
    reader = ScriptReader(PREFIX)
    logged = [line for line, stream in lines if reader.read(line, stream) is not None]
    return reader, logged


def test_the_reader_keeps_markers_and_metadata_out_of_the_log() -> None:
    reader, logged = _read(
        [
            (PREFIX + BUILDER[0], "stdout"),
            ("Step 1/2 : FROM alpine", "stdout"),
            (PREFIX + "cat", "stdout"),
            ("{", "stdout"),
            ('  "snapshotId": "s"', "stdout"),
            ("}", "stdout"),
            (PREFIX + "end", "stdout"),
        ]
    )
    assert logged == ["Step 1/2 : FROM alpine"]
    assert reader.ended
    assert "\n".join(reader.metadata) == '{\n  "snapshotId": "s"\n}'


def test_a_failed_step_is_named_in_the_references_words_with_its_stderr() -> None:
    reader, logged = _read(
        [
            (PREFIX + "mkdir", "stdout"),
            (PREFIX + "tar", "stdout"),
            ("tar: this does not look like a tar archive", "stderr"),
        ]
    )
    assert not reader.ended
    assert logged == ["tar: this does not look like a tar archive"]
    assert reader.failure(2, False) == (
        "Command 'tar' failed with exit code 2:\n  tar: this does not look like a tar archive"
    )


def test_a_marker_on_stderr_or_with_another_builds_id_is_a_log_line() -> None:
    reader, logged = _read([(PREFIX + "end", "stderr"), (marker_prefix("other") + "end", "stdout")])
    assert not reader.ended
    assert len(logged) == 2


def test_a_step_killed_by_a_signal_gets_the_references_negative_code() -> None:
    assert step_exit_code(137) == -9
    assert step_exit_code(143) == -15
    assert [step_exit_code(code) for code in (1, 2, 128, 255)] == [1, 2, 128, 255]
