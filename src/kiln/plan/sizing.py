"""Sizes of the target root filesystem and of the builder sandbox (docs/protocol.md#sizing)."""

from __future__ import annotations

import attrs

from kiln.errors import ResponseError, UsageError

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
TIB = 1024 * GIB
# A fresh base image gets a 10 GiB root filesystem unless the user asks for another size.
DEFAULT_ROOTFS_DISK_BYTES = 10240 * MIB
# The platform stores sizes as unsigned 64-bit integers; anything larger cannot be sent.
U64_MAX = 2**64 - 1

_UNITS = (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB))
_TWO_DECIMALS_BELOW = 10
_ONE_DECIMAL_BELOW = 100


@attrs.frozen
class BuilderResources:
    """What the builder sandbox is created with."""

    cpus: float
    memory_mb: int
    disk_mb: int


def ceil_mib(n_bytes: int) -> int:
    """Whole MiB needed to hold `n_bytes` (rounded up)."""
    if n_bytes + MIB - 1 > U64_MAX:
        raise UsageError(
            "rootfsDiskBytes is too large to convert to megabytes",
            hint="pass a smaller --disk-mb",
        )
    return -(-n_bytes // MIB)


def rootfs_disk_bytes(
    *, disk_mb: int | None, has_parent: bool, parent_rootfs_disk_bytes: int | None
) -> int:
    """The target root filesystem size: the user's --disk-mb, else the parent's, else 10 GiB.

    A diff build must match its parent's size, so a parent without a size is a contract
    break by the platform, not something to paper over with the default.
    """
    if disk_mb is not None:
        return _disk_mb_to_bytes(disk_mb)
    if has_parent:
        if parent_rootfs_disk_bytes is None:
            raise ResponseError(
                "platform API did not return parent rootfsDiskBytes for a diff build",
                hint="pass --disk-mb explicitly, or update the platform API",
            )
        return parent_rootfs_disk_bytes
    return DEFAULT_ROOTFS_DISK_BYTES


def _disk_mb_to_bytes(disk_mb: int) -> int:
    if disk_mb < 0:
        raise UsageError(
            f"--disk-mb must not be negative (got {disk_mb})", hint="pass a size in MiB"
        )
    n_bytes = disk_mb * MIB
    if n_bytes > U64_MAX:
        raise UsageError(
            "--disk-mb is too large to convert to bytes",
            hint=f"pass at most {U64_MAX // MIB} MiB",
        )
    return n_bytes


def builder_resources(
    *,
    rootfs_disk_bytes: int,
    prepared_cpus: float,
    prepared_memory_mb: int,
    prepared_disk_mb: int,
    cpus: float | None = None,
    memory_mb: int | None = None,
    builder_disk_mb: int | None = None,
) -> BuilderResources:
    """Builder sandbox resources: the user's options over the platform's prepared defaults.

    The builder's disk must at least hold the target root filesystem, whatever was asked.
    """
    requested_disk = builder_disk_mb if builder_disk_mb is not None else prepared_disk_mb
    return BuilderResources(
        cpus=cpus if cpus is not None else prepared_cpus,
        memory_mb=memory_mb if memory_mb is not None else prepared_memory_mb,
        disk_mb=max(ceil_mib(rootfs_disk_bytes), requested_disk),
    )


def format_bytes(n: int) -> str:
    """1024-based size for humans: `512 B`, `1.50 KiB`, `12.3 MiB`, `200 GiB`."""
    for unit, size in _UNITS:
        if n >= size:
            value = n / size
            if value < _TWO_DECIMALS_BELOW:
                return f"{value:.2f} {unit}"
            if value < _ONE_DECIMAL_BELOW:
                return f"{value:.1f} {unit}"
            return f"{value:.0f} {unit}"
    return f"{n} B"
