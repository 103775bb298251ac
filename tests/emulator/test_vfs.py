"""The virtual filesystem: path confinement and the ownership/mode model."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.emulator._vfs import ROOT, SANDBOX_USER, FsError, VirtualFS, normalize

SEGMENTS = st.sampled_from(["a", "b", ".", "..", "", "...", "c d", "%2e%2e"])


@settings(max_examples=200)
@given(st.lists(SEGMENTS, max_size=8))
def test_normalize_never_escapes(segments: list[str]) -> None:
    raw = "/" + "/".join(segments)
    try:
        clean = normalize(raw)
    except FsError as refused:
        assert refused.kind == "invalid"
        assert ".." in segments
        return
    assert ".." not in clean.split("/")
    assert clean.startswith("/")
    root = Path("/sandbox-root")
    host = root.joinpath(*clean.split("/")[1:])
    assert host == root or root in host.parents


def test_relative_and_nul_paths_are_refused() -> None:
    for bad in ("etc/passwd", "/tmp/\x00x"):
        with pytest.raises(FsError):
            normalize(bad)


@pytest.fixture
def fs(tmp_path: Path) -> VirtualFS:
    return VirtualFS(tmp_path / "root")


def test_fsuid_pitfall(fs: VirtualFS) -> None:
    fs.mkdir("/var/lib/build", ROOT, parents=True)
    with pytest.raises(FsError, match="Permission denied") as refused:
        fs.write_file("/var/lib/build/x", b"1", SANDBOX_USER)
    assert refused.value.kind == "permission"
    with pytest.raises(FsError):
        fs.chmod("/var/lib/build", 0o777, SANDBOX_USER)
    fs.chmod("/var/lib/build", 0o777, ROOT)
    fs.write_file("/var/lib/build/x", b"1", SANDBOX_USER)
    assert fs.read_file("/var/lib/build/x", SANDBOX_USER) == b"1"


def test_user_owned_directories_stay_writable_by_the_user(fs: VirtualFS) -> None:
    fs.mkdir("/tmp/work/deep", SANDBOX_USER, parents=True)
    fs.write_file("/tmp/work/deep/f", b"x", SANDBOX_USER)
    fs.mkdir("/tmp/locked", SANDBOX_USER, mode=0o555)
    with pytest.raises(FsError):
        fs.write_file("/tmp/locked/f", b"x", SANDBOX_USER)


def test_files_written_by_root_are_readable_but_not_writable(fs: VirtualFS) -> None:
    fs.write_file("/tmp/root-file", b"r", ROOT)
    assert fs.read_file("/tmp/root-file", SANDBOX_USER) == b"r"
    with pytest.raises(FsError):
        fs.write_file("/tmp/root-file", b"u", SANDBOX_USER)


def test_remove_needs_recursive_for_directories(fs: VirtualFS) -> None:
    fs.mkdir("/tmp/d", SANDBOX_USER)
    fs.write_file("/tmp/d/f", b"x", SANDBOX_USER)
    with pytest.raises(FsError, match="Is a directory"):
        fs.remove("/tmp/d", SANDBOX_USER)
    fs.remove("/tmp/d", SANDBOX_USER, recursive=True)
    assert fs.node("/tmp/d/f") is None
    assert not (fs.root / "tmp" / "d").exists()


def test_walk_lists_regular_files_relative_and_sorted(fs: VirtualFS) -> None:
    fs.mkdir("/tmp/c/sub", SANDBOX_USER, parents=True)
    fs.write_file("/tmp/c/sub/b", b"", SANDBOX_USER)
    fs.write_file("/tmp/c/a", b"", SANDBOX_USER)
    assert [rel for rel, _ in fs.walk_files("/tmp/c")] == ["a", "sub/b"]
