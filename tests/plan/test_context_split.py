"""ContextArchive.split: a large context as several archives, extracted one after the other."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from kiln.plan import ContextArchive, EntryKind, ExtraFile

PART_BYTES = 10_000


def make_tree(root: Path) -> Path:
    """Nested directories, files of several sizes (some incompressible), a symlink."""
    for index in range(12):
        path = root / f"d{index % 3}" / f"sub{index % 2}" / f"f{index:02d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(1500 * (index + 1)))
    (root / "empty").mkdir()
    (root / "d0" / "link").symlink_to("sub0/f00.bin")
    (root / "Dockerfile").write_text("FROM scratch\nCOPY . /\n")
    return root


def extract(data: bytes, into: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(into, filter="tar")


def tree(root: Path) -> dict[str, tuple[str, bytes | str, int]]:
    """Every path under root: its kind, its content (or link target) and its mode bits."""
    out: dict[str, tuple[str, bytes | str, int]] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        mode = path.lstat().st_mode & 0o7777
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path), 0)
        elif path.is_dir():
            out[rel] = ("dir", b"", mode)
        else:
            out[rel] = ("file", path.read_bytes(), mode)
    return out


def test_a_context_no_larger_than_a_part_is_not_split(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 100)
    archive = ContextArchive(tmp_path)

    assert archive.split(PART_BYTES) == [archive]


def test_parts_hold_every_entry_once_in_order_with_directories_last(tmp_path: Path) -> None:
    archive = ContextArchive(make_tree(tmp_path))

    parts = archive.split(PART_BYTES)

    assert len(parts) > 2
    paths = [entry.path for part in parts for entry in part.entries()]
    assert sorted(paths) == sorted(entry.path for entry in archive.entries())
    assert len(paths) == len(set(paths))
    files = [e.path for e in archive.entries() if e.kind is not EntryKind.DIR]
    assert [p for p in paths if p in files] == files
    for part in parts[:-1]:
        assert all(entry.kind is not EntryKind.DIR for entry in part.entries())
        assert sum(entry.size for entry in part.entries()) >= PART_BYTES


def test_extracting_the_parts_in_order_gives_the_whole_archive_tree(tmp_path: Path) -> None:
    context = make_tree(tmp_path / "context")
    (context / "d1").chmod(0o750)
    archive = ContextArchive(context, extra_files=[ExtraFile("generated/extra.txt", b"hi")])
    whole, in_parts = tmp_path / "whole", tmp_path / "parts"

    extract(b"".join(archive.chunks()), whole)
    for part in archive.split(PART_BYTES):
        extract(b"".join(part.chunks()), in_parts)

    assert tree(in_parts) == tree(whole)
    assert tree(whole)["generated/extra.txt"][1] == b"hi"


def test_progress_runs_through_the_whole_context_across_the_parts(tmp_path: Path) -> None:
    reports: list[tuple[int, int]] = []
    archive = ContextArchive(make_tree(tmp_path), on_progress=lambda d, t: reports.append((d, t)))
    total = archive.uncompressed_bytes

    for part in archive.split(PART_BYTES):
        b"".join(part.chunks())

    assert {t for _d, t in reports} == {total}
    done = [d for d, _t in reports]
    assert done == sorted(done) and done[0] == 0 and done[-1] == total


def test_a_part_size_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="part_bytes"):
        ContextArchive(tmp_path).split(0)
