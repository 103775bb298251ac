"""Failure diagnostics and advice (docs/protocol.md#diagnostics)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiln.errors import BuildFailed, ServerError, WithDiagnostics
from kiln.machine.protocol import (
    DISK_ADVICE_THRESHOLD_PERCENT,
    REMOTE_BUILD_DIR,
    advice,
    command_failed_message,
    diagnostic_commands,
    dmesg_shows_oom,
    max_disk_usage_percent,
    mentions_disk_error,
    pull_denied_image,
)

SOURCE = "rootfs builder exited with status 1"


def test_build_failed_names_the_builder_sandbox_and_build() -> None:
    # a BuildFailed names the builder sandbox and the build (docs/protocol.md#error-context)
    error = BuildFailed(
        ServerError(SOURCE),
        sandbox_id="rtmmkcw33uvsbep6hn03u",
        build_id="sandbox_template_build_123",
    )
    assert SOURCE in str(error)
    assert "builder sandbox: rtmmkcw33uvsbep6hn03u" in str(error)
    assert "build: sandbox_template_build_123" in str(error)


@pytest.mark.parametrize(
    "dmesg",
    [
        "[ 123.4] Out of memory: Killed process 99 (python) total-vm:1234kB",
        "memory: oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null)",
        "Killed process 42 (cc1plus), UID 0, total-vm:1234kB",
    ],
)
def test_oom_is_detected_in_kernel_oom_entries(dmesg: str) -> None:
    # OOM evidence in the kernel log (docs/protocol.md#diagnostics)
    assert dmesg_shows_oom(dmesg)


def test_unrelated_kernel_entries_are_not_oom() -> None:
    # boot noise is no OOM evidence (docs/protocol.md#diagnostics)
    assert not dmesg_shows_oom("[ 123.4] eth0: link becomes ready\n[ 124.0] EXT4-fs mounted")
    assert not dmesg_shows_oom("")


def test_df_line_gives_its_use_percent_and_the_header_none() -> None:
    # a df line's use percentage (docs/protocol.md#diagnostics)
    assert max_disk_usage_percent("/dev/vda1 10485760 9961472 524288 95% /") == 95
    assert (
        max_disk_usage_percent("Filesystem 1024-blocks Used Available Capacity Mounted on") is None
    )
    assert max_disk_usage_percent("") is None


def test_df_gives_the_highest_use_across_tables() -> None:
    # the highest percentage across df tables (docs/protocol.md#diagnostics)
    output = (
        "Filesystem 1024-blocks Used Available Capacity Mounted on\n"
        "/dev/vda1 10485760 5242880 5242880 50% /\n"
        "Filesystem 1024-blocks Used Available Capacity Mounted on\n"
        "/dev/vdb1 10485760 10066329 419431 96% /var/lib/docker\n"
    )
    assert max_disk_usage_percent(output) == 96


@pytest.mark.parametrize("line", ["/dev/vda1 1 1 1 95", "/dev/vda1 1 1 1 x%", "a b c d 300% /"])
def test_df_lines_without_a_percentage_are_skipped(line: str) -> None:
    assert max_disk_usage_percent(line) is None


@given(st.lists(st.integers(min_value=0, max_value=100), min_size=1, max_size=6))
def test_df_maximum_over_any_tables(percents: list[int]) -> None:
    lines = [f"/dev/vd{i} 100 {p} {100 - p} {p}% /m{i}" for i, p in enumerate(percents)]
    text = "\n".join(["Filesystem 1024-blocks Used Available Capacity Mounted on", *lines])
    assert max_disk_usage_percent(text) == max(percents)


def test_disk_errors_are_recognised_in_any_case() -> None:
    # the words of a full disk (docs/protocol.md#diagnostics)
    assert mentions_disk_error("fallocate: fallocate failed: No space left on device")
    assert mentions_disk_error("failed to write layer: ENOSPC")
    assert not mentions_disk_error(SOURCE)


def test_a_stderr_build_log_line_about_disk_leads_to_disk_advice() -> None:
    # a builder log line reports a full disk (docs/protocol.md#diagnostics): the handler feeds every
    # builder log line to mentions_disk_error
    line = "dd: error writing '/tmp/fill': No space left on device"
    assert mentions_disk_error(line)
    lines = advice(oom=False, disk_percent=None, disk_error=mentions_disk_error(line))
    assert len(lines) == 1
    assert "larger --builder-disk-mb" in lines[0]


def test_advice_thresholds() -> None:
    # the advice thresholds (docs/protocol.md#diagnostics)
    assert DISK_ADVICE_THRESHOLD_PERCENT == 95
    assert advice(oom=False, disk_percent=94, disk_error=False) == []
    both = advice(oom=True, disk_percent=95, disk_error=False)
    assert len(both) == 2
    assert "ran out of memory" in both[0] and "--memory-mb" in both[0]
    assert "ran out of disk space" in both[1] and "--builder-disk-mb" in both[1]
    disk_only = advice(oom=False, disk_percent=10, disk_error=True)
    assert len(disk_only) == 1 and "--builder-disk-mb" in disk_only[0]
    assert advice(oom=False, disk_percent=None, disk_error=False) == []


def test_with_diagnostics_shows_the_source_and_the_advice() -> None:
    # advice lines follow the error (docs/protocol.md#error-context)
    error = WithDiagnostics(
        ServerError(SOURCE), advice(oom=True, disk_percent=99, disk_error=False)
    )
    text = str(error)
    assert text.startswith(SOURCE + "\n")
    assert "ran out of memory" in text
    assert "ran out of disk space" in text


def test_diagnostic_commands_are_the_reference_scripts() -> None:
    dmesg, df = diagnostic_commands()
    assert dmesg == ("/bin/sh", ["-lc", "dmesg 2>/dev/null || true"])
    assert df == (
        "/bin/sh",
        [
            "-lc",
            f"for path in '{REMOTE_BUILD_DIR}' /var/lib/docker /; do "
            'if [ -e "$path" ]; then df -P "$path"; fi; done 2>/dev/null || true',
        ],
    )


def test_command_failed_message() -> None:
    # docs/protocol.md#diagnostics
    assert command_failed_message("tar", 2, False) == "Command 'tar' failed with exit code 2"
    assert command_failed_message("/usr/local/bin/tl-rootfs-build", -9, True) == (
        "Command '/usr/local/bin/tl-rootfs-build' failed with exit code -9"
        " (process was killed by the kernel OOM killer)"
    )


@pytest.mark.parametrize(
    ("line", "image", "login"),
    [
        (
            "pull access denied for registry.example.com/team/base, repository does not exist "
            "or may require 'docker login': denied: requested access to the resource is denied",
            "registry.example.com/team/base",
            "docker login registry.example.com",
        ),
        ("Error: pull access denied for acme/private:1.0", "acme/private:1.0", "docker login`"),
    ],
)
def test_a_refused_pull_gets_login_advice_naming_the_registry(
    line: str, image: str, login: str
) -> None:
    assert pull_denied_image(line) == image
    (text,) = advice(oom=False, disk_percent=None, disk_error=False, denied_image=image)
    assert login in text and image in text


def test_other_lines_are_no_refused_pull() -> None:
    assert pull_denied_image("Step 2/5 : RUN pip install access") is None
