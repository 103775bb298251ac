"""Random sequences of filesystem operations keep the metadata and the host directory in step,
and the sandbox user never writes where the modes say it may not."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from kiln.emulator._vfs import ROOT, SANDBOX_USER, Actor, FsError, VirtualFS

NAMES = st.sampled_from(["a", "b"])
PATHS = st.lists(NAMES, min_size=1, max_size=2).map(lambda parts: "/tmp/" + "/".join(parts))
ACTORS = st.sampled_from([ROOT, SANDBOX_USER])
MODES = st.sampled_from([0o755, 0o777, 0o700, 0o555, 0o644])


class FilesystemMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.host_root = Path(tempfile.mkdtemp(prefix="kiln-vfs-"))
        self.fs = VirtualFS(self.host_root / "root")

    def teardown(self) -> None:
        shutil.rmtree(self.host_root, ignore_errors=True)

    def _writable_by_user(self, directory: str) -> bool:
        node = self.fs.node(directory)
        assert node is not None
        bits = node.mode >> 6 if node.owner == SANDBOX_USER else node.mode
        return bool(bits & 0o2)

    @rule(path=PATHS, actor=ACTORS, mode=MODES, parents=st.booleans())
    def mkdir(self, path: str, actor: Actor, mode: int, parents: bool) -> None:
        try:
            self.fs.mkdir(path, actor, parents=parents, mode=mode)
        except FsError:
            return

    @rule(path=PATHS, actor=ACTORS, mode=MODES)
    def chmod(self, path: str, actor: Actor, mode: int) -> None:
        node = self.fs.node(path)
        try:
            self.fs.chmod(path, mode, actor)
        except FsError as refused:
            assert node is None or (actor == SANDBOX_USER and node.owner == ROOT), refused

    @rule(path=PATHS, actor=ACTORS)
    def write(self, path: str, actor: Actor) -> None:
        parent = path.rsplit("/", 1)[0]
        parent_node = self.fs.node(parent)
        try:
            self.fs.write_file(path, b"x", actor)
        except FsError:
            return
        assert parent_node is not None and parent_node.is_dir
        if actor == SANDBOX_USER:
            assert self._writable_by_user(parent), f"user wrote into {parent}"

    @rule(path=PATHS, actor=ACTORS, recursive=st.booleans())
    def remove(self, path: str, actor: Actor, recursive: bool) -> None:
        try:
            self.fs.remove(path, actor, recursive=recursive)
        except FsError:
            return
        assert self.fs.node(path) is None

    @invariant()
    def metadata_matches_the_host(self) -> None:
        root = self.fs.root
        on_host = {"/"}
        for directory, dirs, files in os.walk(root):
            for name in dirs + files:
                on_host.add("/" + str((Path(directory) / name).relative_to(root)))
        with self.fs._lock:
            known = dict(self.fs._nodes)
        assert set(known) == on_host
        for path, node in known.items():
            assert self.fs.host(path).is_dir() == node.is_dir


TestFilesystem = FilesystemMachine.TestCase
TestFilesystem.settings = settings(max_examples=30, stateful_step_count=20, deadline=None)
