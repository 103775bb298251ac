"""The build context: what is sent, how it is archived, and how the stream behaves."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import gzip
import hashlib
import io
import logging
import os
import stat
import tarfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln.errors import ContextError
from kiln.plan import (
    ContextArchive,
    ContextSummary,
    EntryKind,
    ExtraFile,
    summarize_context,
)
from kiln.plan.context import ContextEntry
from kiln.plan.context._progress import Progress
from kiln.plan.context._tar import _header, _tarfile_header

# Both the archiving thread and the compression threads carry this prefix.
THREAD_PREFIX = "kiln-context"
JOIN_DEADLINE_S = 5.0


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


def archive_bytes(archive: ContextArchive) -> bytes:
    return b"".join(archive.chunks())


def members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


def member_files(data: bytes) -> dict[str, bytes]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for m in tar.getmembers():
            if m.isfile():
                handle = tar.extractfile(m)
                assert handle is not None
                out[m.name] = handle.read()
    return out


def file_paths(archive: ContextArchive) -> list[str]:
    return [e.path for e in archive.entries() if e.kind is EntryKind.FILE]


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]


# --- what is sent ---------------------------------------------------------------------------


def test_dockerignore_drops_listed_files_and_keeps_itself(tmp_path: Path) -> None:
    make_tree(
        tmp_path,
        {
            ".dockerignore": b"ignored.txt\ncache/drop.txt\n",
            "included.txt": b"included",
            "ignored.txt": b"ignored",
            "cache/keep.txt": b"keep",
            "cache/drop.txt": b"drop",
        },
    )
    archive = ContextArchive(tmp_path)
    assert file_paths(archive) == [".dockerignore", "cache/keep.txt", "included.txt"]
    data = archive_bytes(archive)
    assert sorted(member_files(data)) == [".dockerignore", "cache/keep.txt", "included.txt"]
    assert archive.files == 3


def test_docker_keeps_what_gitignore_semantics_would_drop(tmp_path: Path) -> None:
    # gitignore's `foo` matches at any depth; Docker's is anchored at the context root.
    make_tree(tmp_path, {".dockerignore": b"foo\n", "foo": b"top", "sub/foo": b"nested"})
    assert file_paths(ContextArchive(tmp_path)) == [".dockerignore", "sub/foo"]


def test_double_star_and_exceptions_in_order(tmp_path: Path) -> None:
    make_tree(
        tmp_path,
        {
            ".dockerignore": b"**/*.log\n!keep/*.log\nnode_modules\n!node_modules/pkg/README\n",
            "app.log": b"",
            "a/b/deep.log": b"",
            "keep/wanted.log": b"",
            "src/main.py": b"",
            "node_modules/pkg/README": b"",
            "node_modules/pkg/index.js": b"",
            "node_modules/other/index.js": b"",
        },
    )
    archive = ContextArchive(tmp_path)
    assert file_paths(archive) == [
        ".dockerignore",
        "keep/wanted.log",
        "node_modules/pkg/README",
        "src/main.py",
    ]
    dirs = [e.path for e in archive.entries() if e.kind is EntryKind.DIR]
    # Excluded directories appear only as parents of something re-included.
    assert dirs == ["a", "a/b", "keep", "node_modules", "node_modules/pkg", "src"]


def test_dockerfile_and_dockerignore_are_always_sent(tmp_path: Path) -> None:
    make_tree(
        tmp_path,
        {
            ".dockerignore": b"*\n",
            "docker/Dockerfile": b"FROM scratch\n",
            "docker/other": b"",
            "data.bin": b"",
        },
    )
    archive = ContextArchive(tmp_path, dockerfile=tmp_path / "docker" / "Dockerfile")
    assert file_paths(archive) == [".dockerignore", "docker/Dockerfile"]


def test_the_dockerfile_specific_ignore_file_applies(tmp_path: Path) -> None:
    make_tree(
        tmp_path,
        {
            ".dockerignore": b"a.txt\n",
            "Dockerfile": b"FROM scratch\n",
            "Dockerfile.dockerignore": b"b.txt\n",
            "a.txt": b"",
            "b.txt": b"",
        },
    )
    archive = ContextArchive(tmp_path, dockerfile=tmp_path / "Dockerfile")
    assert file_paths(archive) == [
        ".dockerignore",
        "Dockerfile",
        "Dockerfile.dockerignore",
        "a.txt",
    ]


def test_a_dockerfile_outside_the_context_is_not_sent(tmp_path: Path) -> None:
    context = make_tree(tmp_path / "ctx", {"a.txt": b"a"})
    dockerfile = make_tree(tmp_path, {"Dockerfile": b"FROM scratch\n"}) / "Dockerfile"
    assert file_paths(ContextArchive(context, dockerfile=dockerfile)) == ["a.txt"]


def test_symlinks_are_archived_as_links_never_followed(tmp_path: Path) -> None:
    make_tree(tmp_path, {"real/file.txt": b"real"})
    (tmp_path / "passwd").symlink_to("/etc/passwd")
    (tmp_path / "dirlink").symlink_to("real", target_is_directory=True)
    data = archive_bytes(ContextArchive(tmp_path))
    found = members(data)
    assert found["passwd"].issym() and found["passwd"].linkname == "/etc/passwd"
    assert found["passwd"].size == 0
    assert found["dirlink"].issym() and found["dirlink"].linkname == "real"
    assert "dirlink/file.txt" not in found
    # No byte of /etc/passwd travels: the uncompressed tar holds only our own file's content.
    assert Path("/etc/passwd").read_bytes() not in gzip.decompress(data)


def test_fifos_are_skipped_with_a_warning(tmp_path: Path) -> None:
    make_tree(tmp_path, {"a.txt": b"a"})
    os.mkfifo(tmp_path / "pipe")
    warnings: list[str] = []
    archive = ContextArchive(tmp_path, on_warning=warnings.append)
    assert [e.path for e in archive.entries()] == ["a.txt"]
    assert len(warnings) == 1 and "pipe" in warnings[0] and "FIFO" in warnings[0]


def test_a_skipped_fifo_is_logged_through_stdlib_logging_when_structlog_is_unconfigured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # A library must not print: unconfigured structlog wrote this warning to stdout in its own
    # dev format. Through kiln._logging it goes to the stdlib logger, silent unless configured.
    make_tree(tmp_path, {"a.txt": b"a"})
    os.mkfifo(tmp_path / "pipe")
    with caplog.at_level(logging.WARNING, logger="kiln.plan.context"):
        ContextArchive(tmp_path).entries()
    assert capsys.readouterr().out == ""
    [record] = [r for r in caplog.records if r.name == "kiln.plan.context"]
    assert record.levelno == logging.WARNING
    assert "context_entry_skipped" in record.getMessage() and "pipe" in record.getMessage()


def test_an_ignored_fifo_gives_no_warning(tmp_path: Path) -> None:
    make_tree(tmp_path, {".dockerignore": b"pipe\n"})
    os.mkfifo(tmp_path / "pipe")
    warnings: list[str] = []
    ContextArchive(tmp_path, on_warning=warnings.append).entries()
    assert warnings == []


# --- extra (in-memory) files ----------------------------------------------------------------


def test_extra_files_keep_content_and_mode(tmp_path: Path) -> None:
    make_tree(tmp_path, {"on-disk.txt": b"disk"})
    archive = ContextArchive(
        tmp_path, extra_files=[ExtraFile(".tensorlake/runtime.tgz", b"capsule", mode=0o600)]
    )
    data = archive_bytes(archive)
    assert (archive.files, archive.uncompressed_bytes) == (2, 11)
    found = members(data)
    assert found[".tensorlake/runtime.tgz"].mode == 0o600
    assert found[".tensorlake"].isdir() and found[".tensorlake"].mode == 0o755
    assert member_files(data)[".tensorlake/runtime.tgz"] == b"capsule"


@pytest.mark.parametrize("path", ["../escape", "/absolute", "a/../b", "./a", "a//b", "a/", ""])
def test_extra_file_paths_must_be_clean_and_relative(path: str) -> None:
    with pytest.raises(ContextError, match="not a clean relative path") as err:
        ExtraFile(path, b"")
    assert err.value.hint


@pytest.mark.parametrize(
    ("extra", "clashes_with"),
    [
        ("same.txt", "same.txt"),  # duplicates a disk file
        ("same.txt/inner", "same.txt"),  # a disk file would have to be a directory
        ("sub", "sub"),  # a disk directory
        ("link/inner", "link"),  # writing through a symlink
    ],
)
def test_extra_files_must_not_collide_with_the_context(
    tmp_path: Path, extra: str, clashes_with: str
) -> None:
    make_tree(tmp_path, {"same.txt": b"disk", "sub/file": b""})
    (tmp_path / "link").symlink_to("sub")
    archive = ContextArchive(tmp_path, extra_files=[ExtraFile(extra, b"mem")])
    with pytest.raises(ContextError, match=f"collides with .*'{clashes_with}'"):
        archive.entries()


def test_extra_files_must_not_collide_with_each_other(tmp_path: Path) -> None:
    extras = [ExtraFile("a", b"1"), ExtraFile("a", b"2")]
    with pytest.raises(ContextError, match="collides"):
        ContextArchive(tmp_path, extra_files=extras).entries()
    nested = [ExtraFile("a", b"1"), ExtraFile("a/b", b"2")]
    with pytest.raises(ContextError, match="collides"):
        ContextArchive(tmp_path, extra_files=nested).entries()


def test_an_extra_file_may_replace_an_ignored_disk_file(tmp_path: Path) -> None:
    make_tree(tmp_path, {".dockerignore": b"same.txt\n", "same.txt": b"disk"})
    archive = ContextArchive(tmp_path, extra_files=[ExtraFile("same.txt", b"memory")])
    assert member_files(archive_bytes(archive))["same.txt"] == b"memory"


# --- the archive's bytes --------------------------------------------------------------------


def test_the_archive_extracts_to_exactly_the_expected_tree(tmp_path: Path) -> None:
    context = make_tree(
        tmp_path / "ctx",
        {"bin/run.sh": b"#!/bin/sh\necho hi\n", "README": b"read me", "x" * 120 + "/y": b"long"},
    )
    (context / "bin" / "run.sh").chmod(0o755)
    (context / "README").chmod(0o640)
    (context / "empty").mkdir(mode=0o700)
    (context / "empty").chmod(0o700)
    (context / "link").symlink_to("README")
    odd = os.fsencode(context) + b"/caf\xe9"  # not UTF-8: must round-trip byte for byte
    Path(os.fsdecode(odd)).write_bytes(b"odd")
    data = archive_bytes(ContextArchive(context))

    out = tmp_path / "out"
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(out, filter="tar")
    found = {
        p.relative_to(out).as_posix(): p for p in sorted(out.rglob("*"), key=lambda p: p.as_posix())
    }
    assert sorted(found) == sorted(
        ["README", "bin", "bin/run.sh", "empty", "link", "x" * 120, "x" * 120 + "/y", "caf\udce9"]
    )
    assert found["bin/run.sh"].read_bytes() == b"#!/bin/sh\necho hi\n"
    assert stat.S_IMODE(found["bin/run.sh"].stat().st_mode) == 0o755
    assert stat.S_IMODE(found["README"].stat().st_mode) == 0o640
    assert stat.S_IMODE(found["empty"].stat().st_mode) == 0o700
    assert os.readlink(found["link"]) == "README"
    assert found["caf\udce9"].read_bytes() == b"odd"
    assert found["x" * 120 + "/y"].read_bytes() == b"long"


def test_headers_are_normalised(tmp_path: Path) -> None:
    make_tree(tmp_path, {"a/b.txt": b"b"})
    data = archive_bytes(ContextArchive(tmp_path))
    for info in members(data).values():
        assert (info.uid, info.gid, info.uname, info.gname, info.mtime) == (0, 0, "", "", 0)
    # gzip header: no FNAME flag, mtime 0.
    assert data[:2] == b"\x1f\x8b" and data[3] == 0 and data[4:8] == b"\0\0\0\0"


def test_the_archive_is_deterministic_and_content_addressed(tmp_path: Path) -> None:
    files = {"a.txt": b"alpha", "dir/b.txt": b"beta", "dir/c/d.txt": b"delta"}
    first = make_tree(tmp_path / "one", files)
    second = make_tree(tmp_path / "two", dict(reversed(files.items())))
    os.utime(second / "a.txt", (1_000_000, 1_000_000))
    os.utime(second / "dir", (2_000_000, 2_000_000))

    one, two = ContextArchive(first), ContextArchive(second)
    assert archive_bytes(one) == archive_bytes(two)
    assert one.digest == two.digest and one.compressed_sha256 == two.compressed_sha256

    (second / "dir" / "b.txt").write_bytes(b"BETA")
    changed = ContextArchive(second)
    archive_bytes(changed)
    assert changed.digest != one.digest


def test_stream_figures_describe_the_stream(tmp_path: Path) -> None:
    make_tree(tmp_path, {"a.txt": b"alpha", "b/c.txt": b"gamma!"})
    archive = ContextArchive(tmp_path, chunk_size=64)
    with pytest.raises(RuntimeError, match="not been fully consumed"):
        _ = archive.digest
    data = archive_bytes(archive)
    assert archive.compressed_bytes == len(data)
    assert archive.compressed_sha256 == hashlib.sha256(data).hexdigest()
    assert archive.digest == "sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest()
    assert (archive.files, archive.uncompressed_bytes) == (2, 11)
    assert len(gzip.decompress(data)) % tarfile.RECORDSIZE == 0


def test_summary_matches_the_archive(tmp_path: Path) -> None:
    make_tree(tmp_path, {"a.txt": b"alpha", ".dockerignore": b"b\n", "b/c.txt": b"gone"})
    extra = [ExtraFile("gen/x", b"xyz")]
    archive = ContextArchive(tmp_path, extra_files=extra)
    archive_bytes(archive)
    summary = summarize_context(tmp_path, extra_files=extra)
    assert summary == ContextSummary(
        dir=str(tmp_path), files=3, bytes=len(b"alpha") + len(b"b\n") + 3, digest=archive.digest
    )


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    files=st.dictionaries(
        st.lists(st.sampled_from(["a", "b", "c d", "é", ".x"]), min_size=1, max_size=3).map(
            lambda parts: "/".join(f"{p}{i}" for i, p in enumerate(parts))
        ),
        st.binary(max_size=2000),
        max_size=8,
    ),
    chunk_size=st.integers(min_value=1, max_value=4096),
)
def test_any_tree_round_trips(
    tmp_path_factory: pytest.TempPathFactory, files: dict[str, bytes], chunk_size: int
) -> None:
    # A path is either a file or a directory, never both.
    files = {p: c for p, c in files.items() if not any(o.startswith(p + "/") for o in files)}
    root = make_tree(tmp_path_factory.mktemp("tree"), files)
    archive = ContextArchive(root, chunk_size=chunk_size)
    chunks = list(archive.chunks())
    assert all(len(c) == chunk_size for c in chunks[:-1]) and 0 < len(chunks[-1]) <= chunk_size
    assert member_files(b"".join(chunks)) == files


def test_a_multi_block_stream_is_one_valid_gzip_member(tmp_path: Path) -> None:
    # Several compression blocks, mixing compressible and incompressible data.
    files = {"text.txt": b"all work and no play\n" * 150_000, "noise.bin": os.urandom(3 << 20)}
    data = archive_bytes(ContextArchive(make_tree(tmp_path, files)))
    assert member_files(data) == files
    assert len(data) < sum(map(len, files.values()))


def test_the_bytes_do_not_depend_on_the_number_of_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(tmp_path, {"a.bin": os.urandom(2 << 20), "b.txt": b"abc" * 1_000_000})
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    single = archive_bytes(ContextArchive(tmp_path))
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert archive_bytes(ContextArchive(tmp_path)) == single


# What os.scandir can return: any character but NUL, undecodable bytes as \udc80-\udcff.
NAME_CHARS = st.one_of(
    st.characters(codec="utf-8", blacklist_characters="\0"),
    st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF),
)


@settings(max_examples=200)
@given(
    # Entry paths never end in "/" (the walk and ExtraFile produce none).
    path=st.text(NAME_CHARS, min_size=1, max_size=120).filter(lambda p: not p.endswith("/")),
    kind=st.sampled_from(EntryKind),
    size=st.one_of(st.integers(0, 1 << 20), st.integers(8**11 - 2, 8**11 + 2)),
    mode=st.integers(0, 0o7777),
    target=st.text(NAME_CHARS, max_size=120),
)
def test_headers_are_byte_identical_to_tarfile(
    path: str, kind: EntryKind, size: int, mode: int, target: str
) -> None:
    entry = ContextEntry(
        path,
        kind,
        size if kind is EntryKind.FILE else 0,
        mode,
        link_target=target if kind is EntryKind.SYMLINK else "",
    )
    assert _header(entry) == _tarfile_header(entry)


# --- streaming ------------------------------------------------------------------------------

BIG_FILE_BYTES = 50 << 20
STREAM_CHUNK = 256 << 10
# Far below the archive's size (random data does not compress): it is never held whole.
PEAK_MEMORY_LIMIT = 24 << 20


def test_streaming_a_big_file_uses_bounded_memory(tmp_path: Path) -> None:
    with (tmp_path / "big.bin").open("wb") as handle:
        for _ in range(BIG_FILE_BYTES // (1 << 20)):
            handle.write(os.urandom(1 << 20))
    archive = ContextArchive(tmp_path, chunk_size=STREAM_CHUNK)
    archive.entries()
    largest, total = 0, 0
    tracemalloc.start()
    try:
        for chunk in archive.chunks():
            largest = max(largest, len(chunk))
            total += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert largest <= STREAM_CHUNK
    assert total == archive.compressed_bytes
    assert archive.uncompressed_bytes == BIG_FILE_BYTES < archive.compressed_bytes
    assert peak < PEAK_MEMORY_LIMIT, f"peak {peak} bytes"


def test_progress_is_reported_from_zero_to_total(tmp_path: Path) -> None:
    make_tree(tmp_path, {f"f{i:03}": bytes(1000) for i in range(250)})
    seen: list[tuple[int, int]] = []
    archive_bytes(ContextArchive(tmp_path, on_progress=lambda d, t: seen.append((d, t))))
    total = 250 * 1000
    assert seen[0] == (0, total) and seen[-1] == (total, total)
    percents = [d * 100 // t for d, t in seen]
    assert percents == sorted(set(percents)), "one report per percent, rising"
    assert len(seen) == 101


def test_progress_of_an_empty_context_reports_start_and_end(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    archive_bytes(ContextArchive(tmp_path, on_progress=lambda d, t: seen.append((d, t))))
    assert seen == [(0, 0), (0, 0)]


def test_progress_also_reports_every_64_mib() -> None:
    seen: list[tuple[int, int]] = []
    total = 100 << 30  # 1 % is about 1 GiB, so only the 64 MiB rule fires below it
    progress = Progress(total, lambda d, t: seen.append((d, t)))
    for _ in range(5):
        progress.advance(32 << 20)
    assert [d for d, _ in seen] == [0, 64 << 20, 128 << 20]


# --- errors ---------------------------------------------------------------------------------


def test_a_missing_context_is_named_with_a_hint(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ContextError) as err:
        ContextArchive(missing).entries()
    assert str(err.value) == f"build context not found: {missing}"
    assert err.value.hint


def test_a_file_as_context_is_an_error(tmp_path: Path) -> None:
    make_tree(tmp_path, {"file": b""})
    with pytest.raises(ContextError, match="not a directory"):
        summarize_context(tmp_path / "file")


def grow_during_read(path: Path) -> Callable[[int, int], None]:
    def on_progress(done: int, total: int) -> None:
        if 0 < done < total or done == total > 0:
            with path.open("ab") as handle:
                handle.write(b"more")

    return on_progress


def test_a_file_that_grows_while_read_is_an_error(tmp_path: Path) -> None:
    big = tmp_path / "growing.bin"
    with big.open("wb") as handle:
        handle.truncate(3 << 20)
    archive = ContextArchive(tmp_path, on_progress=grow_during_read(big))
    with pytest.raises(ContextError, match=r"growing\.bin changed .* grew beyond") as err:
        archive_bytes(archive)
    assert err.value.hint


def test_a_file_that_shrinks_while_read_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "shrinking.bin"
    path.write_bytes(bytes(3 << 20))

    def shrink(done: int, total: int) -> None:
        if 0 < done < total:
            os.truncate(path, 1)

    with pytest.raises(ContextError, match=r"shrinking\.bin changed .* shrank"):
        archive_bytes(ContextArchive(tmp_path, on_progress=shrink))


def test_a_file_changed_between_walk_and_read_is_an_error(tmp_path: Path) -> None:
    make_tree(tmp_path, {"a.txt": b"short"})
    archive = ContextArchive(tmp_path)
    archive.entries()
    (tmp_path / "a.txt").write_bytes(b"much longer now")
    with pytest.raises(ContextError, match=r"a\.txt changed .* size went from 5 to 15"):
        archive_bytes(archive)


def test_a_file_that_vanishes_is_an_error(tmp_path: Path) -> None:
    make_tree(tmp_path, {"a.txt": b"a"})
    archive = ContextArchive(tmp_path)
    archive.entries()
    (tmp_path / "a.txt").unlink()
    with pytest.raises(ContextError, match=r"a\.txt disappeared"):
        archive_bytes(archive)


def test_a_file_replaced_by_a_symlink_is_not_followed(tmp_path: Path) -> None:
    make_tree(tmp_path, {"a.txt": b"a"})
    archive = ContextArchive(tmp_path)
    archive.entries()
    (tmp_path / "a.txt").unlink()
    (tmp_path / "a.txt").symlink_to("/etc/passwd")
    with pytest.raises(ContextError, match="no longer a regular file"):
        archive_bytes(archive)


def test_an_unreadable_file_is_an_error_at_walk_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(tmp_path, {"secret.key": b"k", "ok.txt": b""})
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, m: not str(p).endswith("secret.key") and real_access(p, m)
    )
    with pytest.raises(ContextError, match=r"cannot read secret\.key") as err:
        ContextArchive(tmp_path).entries()
    assert err.value.hint is not None and ".dockerignore" in err.value.hint


def test_a_file_that_becomes_unreadable_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(tmp_path, {"a.txt": b"a"})
    archive = ContextArchive(tmp_path)
    archive.entries()

    real_open = os.open

    def refuse(path: str, flags: int, *args: int, **kwargs: int | None) -> int:
        if str(path).endswith("a.txt"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(ContextError, match=r"cannot read a\.txt in the build context"):
        archive_bytes(archive)


def test_a_malformed_dockerignore_is_an_error(tmp_path: Path) -> None:
    make_tree(tmp_path, {".dockerignore": b"[\n"})
    with pytest.raises(ContextError, match="bad pattern"):
        ContextArchive(tmp_path).entries()


# --- async consumption ----------------------------------------------------------------------


async def test_achunks_yields_the_same_stream(tmp_path: Path) -> None:
    make_tree(tmp_path, {f"f{i}": os.urandom(5000) for i in range(20)})
    archive = ContextArchive(tmp_path, chunk_size=4096)
    expected = archive_bytes(archive)
    received = [chunk async for chunk in archive.achunks()]
    assert b"".join(received) == expected
    assert archive.compressed_bytes == len(expected)
    assert worker_threads() == []


async def test_achunks_stops_the_thread_when_the_consumer_breaks(tmp_path: Path) -> None:
    make_tree(tmp_path, {f"f{i}": os.urandom(20_000) for i in range(50)})
    stream = ContextArchive(tmp_path, chunk_size=1024).achunks()
    async for _ in stream:
        break
    await stream.aclose()
    assert worker_threads() == []


async def test_achunks_stops_the_thread_when_the_consumer_is_cancelled(tmp_path: Path) -> None:
    make_tree(tmp_path, {f"f{i}": os.urandom(20_000) for i in range(50)})
    started = asyncio.Event()

    async def slow_upload() -> None:
        # An `async for` does not close its iterator on error; `aclosing` does, at once.
        async with contextlib.aclosing(ContextArchive(tmp_path, chunk_size=1024).achunks()) as s:
            async for _ in s:
                started.set()
                await asyncio.Event().wait()  # a stalled network

    task = asyncio.create_task(slow_upload())
    await asyncio.wait_for(started.wait(), JOIN_DEADLINE_S)
    assert worker_threads()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert worker_threads() == []


async def test_an_abandoned_achunks_stops_its_thread_when_collected(tmp_path: Path) -> None:
    make_tree(tmp_path, {f"f{i}": os.urandom(20_000) for i in range(50)})
    stream = ContextArchive(tmp_path, chunk_size=1024).achunks()
    await anext(stream)
    assert worker_threads()
    del stream
    gc.collect()
    # The event loop closes a collected async generator in a task of its own.
    deadline = time.monotonic() + JOIN_DEADLINE_S
    while worker_threads():
        assert time.monotonic() < deadline, "the archiving thread outlived its consumer"
        await asyncio.sleep(0.01)


async def test_achunks_raises_the_producer_error(tmp_path: Path) -> None:
    make_tree(tmp_path, {"a.txt": b"a"})
    archive = ContextArchive(tmp_path)
    archive.entries()
    (tmp_path / "a.txt").unlink()
    with pytest.raises(ContextError, match="disappeared"):
        async for _ in archive.achunks():
            pass
    assert worker_threads() == []
