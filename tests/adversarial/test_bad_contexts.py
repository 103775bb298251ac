"""Bad build contexts: found when the build is planned (exit 2, the path named, nothing sent),
never after a sandbox exists; deep trees walked without recursion; nothing outside the context
ever archived, even when a directory is swapped for a symlink between the walk and the read."""

from __future__ import annotations

import ctypes
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.errors import ContextError
from kiln.plan import ContextArchive
from kiln.testing import TEST_TOKEN, EmulatorClient
from support.processes import kiln_env, run_kiln

DEEP = 1_200
# Deeper than PATH_MAX (4096 bytes) allows a path to be named: such a tree cannot be archived.
TOO_DEEP_NAME = "deep"
# prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH): a root test process's child
# then obeys file modes as any user does, so a mode-000 file is really unreadable to it.
PR_CAPBSET_DROP = 24
DAC_CAPABILITIES = (1, 2)
SECRET = b"outside the context\n"


def _obey_file_modes() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in DAC_CAPABILITIES:
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _as_user() -> dict[str, object]:
    """subprocess options under which file modes hold, whoever runs the tests."""
    return {"preexec_fn": _obey_file_modes} if os.geteuid() == 0 else {}


@pytest.fixture
def context(tmp_path: Path) -> Path:
    root = tmp_path / "ctx"
    root.mkdir()
    (root / "Dockerfile").write_text("FROM alpine:3.20\nCOPY . /app\n")
    (root / "app.py").write_text("print('hi')\n")
    return root


def _command(kind: str, context: Path, emulator: EmulatorClient) -> list[str]:
    dockerfile = str(context / "Dockerfile")
    if kind == "build":
        return ["build", dockerfile, "--api-url", emulator.url]
    return ["submit", dockerfile]


def _refused(
    kind: str, context: Path, emulator: EmulatorClient, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    """Run `kiln build` or `kiln submit` on a bad context: it must exit 2 with nothing sent and
    nothing queued."""
    env = kiln_env(tmp_path, token=TEST_TOKEN)
    done = run_kiln(_command(kind, context, emulator), env, **_as_user())
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert emulator.requests() == []
    listed = run_kiln(["ls", "--json"], env)
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stdout
    return done


@pytest.mark.parametrize("kind", ["build", "submit"])
def test_an_unreadable_file_is_a_plan_error(
    kind: str, context: Path, kiln_emulator: EmulatorClient, tmp_path: Path
) -> None:
    secret = context / "private" / "key.pem"
    secret.parent.mkdir()
    secret.write_text("-----BEGIN PRIVATE KEY-----\n")
    secret.chmod(0)
    done = _refused(kind, context, kiln_emulator, tmp_path)
    assert "cannot read private/key.pem in the build context" in done.stderr
    assert "exclude it in .dockerignore" in done.stderr


@pytest.mark.parametrize("kind", ["build", "submit"])
def test_an_invalid_dockerignore_pattern_is_a_plan_error(
    kind: str, context: Path, kiln_emulator: EmulatorClient, tmp_path: Path
) -> None:
    (context / ".dockerignore").write_text("*.pyc\n[\n")
    done = _refused(kind, context, kiln_emulator, tmp_path)
    assert "'['" in done.stderr and ".dockerignore" in done.stderr


@pytest.fixture
def deep_context() -> Iterator[Path]:
    """A context outside pytest's temporary directories, removed at the end with rm(1).

    Python's shutil.rmtree recurses: pytest's cleanup of old temporary directories would hit
    the recursion limit on a deep tree, and fail every later pytest session on the machine.
    """
    top = Path(tempfile.mkdtemp(prefix="kiln-deep-context-"))
    root = top / "ctx"
    root.mkdir()
    (root / "Dockerfile").write_text("FROM alpine:3.20\nCOPY . /app\n")
    yield root
    subprocess.run(["rm", "-rf", str(top)], check=True)


def _nest(root: Path, name: str, depth: int) -> None:
    """``depth`` directories named ``name`` one inside the other, with a file at the bottom;
    made through descriptors, since the whole path may be too long to name."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        leaf = os.open("bottom.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(leaf, b"deep\n")
        os.close(leaf)
    finally:
        os.close(fd)


@pytest.mark.parametrize("kind", ["build", "submit"])
def test_a_tree_too_deep_to_name_is_a_plan_error(
    kind: str, deep_context: Path, kiln_emulator: EmulatorClient, tmp_path: Path
) -> None:
    _nest(deep_context, TOO_DEEP_NAME, DEEP)
    done = _refused(kind, deep_context, kiln_emulator, tmp_path)
    assert f"{TOO_DEEP_NAME}/{TOO_DEEP_NAME}/" in done.stderr
    assert "File name too long" in done.stderr


def test_a_tree_1200_deep_is_walked_and_archived(deep_context: Path) -> None:
    """Deeper than Python's recursion limit, still short enough to name: archived whole."""
    _nest(deep_context, "d", DEEP)
    archive = ContextArchive(deep_context)
    bottom = "/".join(["d"] * DEEP) + "/bottom.txt"
    assert bottom in {entry.path for entry in archive.entries()}
    with tarfile.open(fileobj=io.BytesIO(b"".join(archive.chunks())), mode="r:gz") as tar:
        member = tar.extractfile(bottom)
        assert member is not None and member.read() == b"deep\n"


def test_plan_of_proc_1_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM alpine\n")
    done = run_kiln(["plan", str(dockerfile), "--context", "/proc/1"], kiln_env(tmp_path))
    assert "Traceback" not in done.stderr
    if done.returncode != 0:  # where /proc/1's links are readable, the plan simply succeeds
        assert done.returncode == 2
        assert "kiln: error: cannot read" in done.stderr


@pytest.fixture
def swapped(tmp_path: Path, context: Path) -> Iterator[tuple[ContextArchive, Path]]:
    """A context walked while ``sub/`` was a directory, then ``sub`` swapped for a symlink to a
    directory outside the context holding a file of the same name and size."""
    inside = context / "sub" / "nested"
    inside.mkdir(parents=True)
    (inside / "data.txt").write_bytes(b"x" * len(SECRET))
    outside = tmp_path / "outside" / "nested"
    outside.mkdir(parents=True)
    (outside / "data.txt").write_bytes(SECRET)
    archive = ContextArchive(context)
    assert "sub/nested/data.txt" in {entry.path for entry in archive.entries()}
    shutil.rmtree(context / "sub")
    (context / "sub").symlink_to(tmp_path / "outside")
    yield archive, context


def test_a_parent_swapped_for_a_symlink_is_never_followed(
    swapped: tuple[ContextArchive, Path],
) -> None:
    archive, _context = swapped
    read: list[bytes] = []
    with pytest.raises(ContextError, match="sub changed while the build context was being"):
        for piece in archive.tar_stream():
            read.append(piece)
    assert SECRET not in b"".join(read)


def test_a_grandparent_swapped_for_a_symlink_is_never_followed(tmp_path: Path) -> None:
    """The swap deeper in the path, where the kept directory descriptor must not help it."""
    context = tmp_path / "ctx"
    (context / "a" / "b").mkdir(parents=True)
    (context / "a" / "b" / "one.txt").write_bytes(b"1" * len(SECRET))
    (context / "a" / "b" / "two.txt").write_bytes(b"2" * len(SECRET))
    outside = tmp_path / "outside" / "b"
    outside.mkdir(parents=True)
    (outside / "one.txt").write_bytes(SECRET)
    (outside / "two.txt").write_bytes(SECRET)
    archive = ContextArchive(context)
    archive.entries()
    shutil.rmtree(context / "a")
    (context / "a").symlink_to(tmp_path / "outside")
    with pytest.raises(ContextError, match="a changed while"):
        b"".join(archive.tar_stream())
