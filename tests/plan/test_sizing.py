"""Sizing (docs/protocol.md#sizing) and byte formatting (docs/protocol.md#status-lines)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiln.errors import ResponseError, UsageError
from kiln.plan.sizing import (
    DEFAULT_ROOTFS_DISK_BYTES,
    GIB,
    MIB,
    U64_MAX,
    BuilderResources,
    builder_resources,
    ceil_mib,
    format_bytes,
    rootfs_disk_bytes,
)


def test_default_rootfs_is_ten_gib() -> None:
    assert DEFAULT_ROOTFS_DISK_BYTES == 10 * GIB


def test_base_build_without_parent_gets_the_default() -> None:
    assert rootfs_disk_bytes(disk_mb=None, has_parent=False, parent_rootfs_disk_bytes=None) == (
        10 * GIB
    )


def test_diff_build_takes_the_parent_size() -> None:
    size = rootfs_disk_bytes(disk_mb=None, has_parent=True, parent_rootfs_disk_bytes=20 * GIB)
    assert size == 20 * GIB


def test_disk_mb_wins() -> None:
    size = rootfs_disk_bytes(disk_mb=2048, has_parent=True, parent_rootfs_disk_bytes=20 * GIB)
    assert size == 2048 * MIB


def test_disk_mb_too_large_for_u64_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--disk-mb is too large"):
        rootfs_disk_bytes(disk_mb=U64_MAX, has_parent=False, parent_rootfs_disk_bytes=None)
    largest = U64_MAX // MIB
    assert rootfs_disk_bytes(disk_mb=largest, has_parent=False, parent_rootfs_disk_bytes=None)


def test_negative_disk_mb_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        rootfs_disk_bytes(disk_mb=-1, has_parent=False, parent_rootfs_disk_bytes=None)


def test_diff_parent_without_size_is_a_response_error() -> None:
    with pytest.raises(ResponseError, match="parent rootfsDiskBytes") as caught:
        rootfs_disk_bytes(disk_mb=None, has_parent=True, parent_rootfs_disk_bytes=None)
    assert "--disk-mb" in (caught.value.hint or "")


def test_ceil_mib() -> None:
    assert ceil_mib(MIB) == 1
    assert ceil_mib(MIB + 1) == 2
    assert ceil_mib(0) == 0
    with pytest.raises(UsageError):
        ceil_mib(U64_MAX)


@given(st.integers(min_value=0, max_value=2**50))
def test_ceil_mib_is_the_smallest_covering_count(n: int) -> None:
    count = ceil_mib(n)
    assert (count - 1) * MIB < n <= count * MIB or n == count == 0


def test_builder_resources_default_to_prepared_values() -> None:
    resources = builder_resources(
        rootfs_disk_bytes=10 * GIB,
        prepared_cpus=2.0,
        prepared_memory_mb=4096,
        prepared_disk_mb=30720,
    )
    assert resources == BuilderResources(cpus=2.0, memory_mb=4096, disk_mb=30720)


def test_builder_resources_take_options_and_cover_the_rootfs() -> None:
    resources = builder_resources(
        rootfs_disk_bytes=40 * GIB + 1,
        prepared_cpus=2.0,
        prepared_memory_mb=4096,
        prepared_disk_mb=30720,
        cpus=8.0,
        memory_mb=16384,
        builder_disk_mb=1024,
    )
    assert resources == BuilderResources(cpus=8.0, memory_mb=16384, disk_mb=40 * 1024 + 1)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (512, "512 B"),
        (1023, "1023 B"),
        (1536, "1.50 KiB"),
        (int(12.34 * MIB), "12.3 MiB"),
        (200 * GIB, "200 GiB"),
        (10 * GIB, "10.0 GiB"),
        (3 * 1024 * GIB, "3.00 TiB"),
        (5000 * 1024 * GIB, "5000 TiB"),
    ],
)
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text
