"""A sandbox's virtual filesystem: a host directory plus ownership and modes kept as metadata.

The emulator runs as root on the host, so host permissions would let everything through. Instead
every node's owner and mode live in a table here and every operation is checked against it, which
reproduces the platform's fsuid pitfall: the file API acts as the sandbox user, so a directory made
by root and not opened up is not writable through it.

Virtual paths are absolute POSIX paths. Any ``..`` component is refused outright rather than
resolved. Symbolic links are entries of this table only (their target is a string, never a host
symlink): writes never go through them, and reads resolve them inside the virtual tree, where
``..`` at ``/`` stays at ``/`` as in a chroot, so nothing outside the sandbox root can be reached.
Hard links are host hard links between two files of the same sandbox directory.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Literal

import attrs

Actor = Literal["root", "user"]
ROOT: Actor = "root"
SANDBOX_USER: Actor = "user"

DEFAULT_DIR_MODE = 0o755
DEFAULT_FILE_MODE = 0o644
_STICKY_TMP_MODE = 0o1777
_READ, _WRITE = 0o4, 0o2
_OWNER_SHIFT = 6
# What a fresh builder VM image has: root-owned system directories and a world-writable /tmp.
_SKELETON = ("/var", "/var/lib", "/usr", "/usr/local", "/usr/local/bin", "/etc", "/home")
_COPY_CHUNK = 1024 * 1024
# Linux's limits: a path component (NAME_MAX) and a whole path (PATH_MAX), in bytes.
NAME_MAX = 255
PATH_MAX = 4096
_SYMLINK_MODE = 0o777
# Linux gives up resolving after this many links (ELOOP).
MAX_SYMLINK_HOPS = 40

FsErrorKind = Literal["not_found", "permission", "invalid", "exists", "not_dir", "is_dir"]


class FsError(Exception):
    """A refused filesystem operation; ``kind`` lets the HTTP layer pick a status."""

    def __init__(self, kind: FsErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@attrs.define
class Node:
    owner: Actor
    mode: int
    is_dir: bool
    # The target of a symbolic link, as written; None for files and directories.
    link: str | None = None


def normalize(path: str) -> str:
    """The canonical form of an absolute virtual path; refuses anything that could escape."""
    if not path.startswith("/"):
        raise FsError("invalid", f"path {path!r} must be absolute")
    if "\x00" in path:
        raise FsError("invalid", "path contains a NUL byte")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise FsError("invalid", f"path {path!r} contains '..'; path traversal is refused")
    if any(len(part.encode()) > NAME_MAX for part in parts):
        raise FsError(
            "invalid", f"{path[:80]}...: File name too long (a component over {NAME_MAX} bytes)"
        )
    if len(path.encode()) > PATH_MAX:
        raise FsError("invalid", f"{path[:80]}...: File name too long (over {PATH_MAX} bytes)")
    return "/" + "/".join(parts)


def _parent(path: str) -> str:
    return str(PurePosixPath(path).parent)


class VirtualFS:
    """One sandbox's files. Thread-safe: tar extraction and snapshot packing run in worker threads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.RLock()
        self._nodes: dict[str, Node] = {"/": Node(ROOT, DEFAULT_DIR_MODE, True)}
        root.mkdir(parents=True, exist_ok=True)
        for directory in _SKELETON:
            self.mkdir(directory, ROOT)
        self.mkdir("/tmp", ROOT, mode=_STICKY_TMP_MODE)

    def host(self, path: str) -> Path:
        """The host path behind a virtual one (already normalized)."""
        return self.root.joinpath(*PurePosixPath(path).parts[1:])

    def node(self, path: str) -> Node | None:
        with self._lock:
            return self._nodes.get(normalize(path))

    def is_dir(self, path: str) -> bool:
        node = self.node(path)
        return node is not None and node.is_dir

    def _existing(self, path: str) -> Node:
        node = self._nodes.get(path)
        if node is None:
            raise FsError("not_found", f"{path}: No such file or directory")
        return node

    @staticmethod
    def _permits(node: Node, actor: Actor, bit: int) -> bool:
        if actor == ROOT:
            return True
        bits = node.mode >> _OWNER_SHIFT if node.owner == actor else node.mode
        return bool(bits & bit)

    def _require_writable_dir(self, path: str, actor: Actor) -> None:
        node = self._existing(path)
        if not node.is_dir:
            raise FsError("not_dir", f"{path}: Not a directory")
        if not self._permits(node, actor, _WRITE):
            raise FsError(
                "permission",
                f"{path}: Permission denied (owned by {node.owner}, mode {node.mode & 0o7777:04o}; "
                f"acting as {actor})",
            )

    def mkdir(
        self, path: str, actor: Actor, *, parents: bool = False, mode: int = DEFAULT_DIR_MODE
    ) -> None:
        path = normalize(path)
        with self._lock:
            existing = self._nodes.get(path)
            if existing is not None:
                if existing.is_dir and parents:
                    return
                raise FsError("exists", f"cannot create directory '{path}': File exists")
            parent = _parent(path)
            if parents and parent not in self._nodes:
                self.mkdir(parent, actor, parents=True)
            self._require_writable_dir(parent, actor)
            self.host(path).mkdir()
            self._nodes[path] = Node(actor, mode, True)

    def chmod(self, path: str, mode: int, actor: Actor) -> None:
        path = normalize(path)
        with self._lock:
            node = self._existing(path)
            if actor != ROOT and node.owner != actor:
                raise FsError(
                    "permission", f"changing permissions of '{path}': Operation not permitted"
                )
            node.mode = mode

    def open_for_write(self, path: str, actor: Actor, mode: int = DEFAULT_FILE_MODE) -> IO[bytes]:
        """Create or truncate a regular file the way ``open(O_CREAT|O_TRUNC)`` would as ``actor``."""
        path = normalize(path)
        with self._lock:
            existing = self._nodes.get(path)
            if existing is not None and existing.is_dir:
                raise FsError("is_dir", f"{path}: Is a directory")
            if existing is not None and existing.link is not None:
                raise FsError(
                    "invalid", f"{path}: is a symbolic link; the emulator never writes through one"
                )
            self._require_writable_dir(_parent(path), actor)
            if existing is not None and not self._permits(existing, actor, _WRITE):
                raise FsError("permission", f"{path}: Permission denied")
            if existing is None:
                self._nodes[path] = Node(actor, mode, False)
            return self.host(path).open("wb")

    def write_file(self, path: str, data: bytes, actor: Actor) -> None:
        with self.open_for_write(path, actor) as handle:
            handle.write(data)

    def copy_in(self, path: str, source: IO[bytes], actor: Actor, mode: int) -> None:
        with self.open_for_write(path, actor, mode) as handle:
            shutil.copyfileobj(source, handle, _COPY_CHUNK)

    def symlink(self, path: str, target: str, actor: Actor) -> None:
        """A link entry, replacing a file or link already there (as ``tar -x`` does)."""
        path = normalize(path)
        with self._lock:
            self._require_writable_dir(_parent(path), actor)
            existing = self._nodes.get(path)
            if existing is not None and existing.is_dir:
                raise FsError("exists", f"{path}: Cannot create symlink to '{target}': File exists")
            if existing is not None and existing.link is None:
                self.host(path).unlink()
            self._nodes[path] = Node(actor, _SYMLINK_MODE, False, link=target)

    def hardlink(self, path: str, existing_path: str, actor: Actor) -> None:
        """A second name for a regular file of this sandbox."""
        path, existing_path = normalize(path), normalize(existing_path)
        with self._lock:
            source = self._nodes.get(existing_path)
            if source is None or source.is_dir or source.link is not None:
                problem = (
                    "Is a directory" if source and source.is_dir else "No such file or directory"
                )
                raise FsError(
                    "not_found", f"{path}: Cannot hard link to '{existing_path}': {problem}"
                )
            self._require_writable_dir(_parent(path), actor)
            current = self._nodes.get(path)
            if current is not None and current.is_dir:
                raise FsError("is_dir", f"{path}: Cannot hard link: Is a directory")
            if current is not None and current.link is None:
                self.host(path).unlink()
            os.link(self.host(existing_path), self.host(path))
            self._nodes[path] = Node(source.owner, source.mode, False)

    def link_target(self, path: str) -> str | None:
        node = self.node(path)
        return None if node is None else node.link

    def _resolve(self, path: str) -> str:
        """Follow symbolic links inside the virtual tree (the lock is held)."""
        for _ in range(MAX_SYMLINK_HOPS):
            node = self._nodes.get(path)
            if node is None or node.link is None:
                return path
            joined = posixpath.join(_parent(path), node.link)
            # Like a chroot: '..' at the root stays at the root, so a link cannot leave it.
            path = normalize(posixpath.normpath("/" + joined.lstrip("/")))
        raise FsError("invalid", f"{path}: Too many levels of symbolic links")

    def readable_host_path(self, path: str, actor: Actor) -> Path:
        path = normalize(path)
        with self._lock:
            path = self._resolve(path)
            node = self._existing(path)
            if node.is_dir:
                raise FsError("is_dir", f"{path}: Is a directory")
            if not self._permits(node, actor, _READ):
                raise FsError("permission", f"{path}: Permission denied")
            return self.host(path)

    def read_file(self, path: str, actor: Actor) -> bytes:
        return self.readable_host_path(path, actor).read_bytes()

    def remove(self, path: str, actor: Actor, *, recursive: bool = False) -> None:
        path = normalize(path)
        with self._lock:
            node = self._existing(path)
            if path == "/":
                raise FsError("permission", "refusing to remove '/'")
            if node.is_dir and not recursive:
                raise FsError("is_dir", f"cannot remove '{path}': Is a directory")
            self._require_writable_dir(_parent(path), actor)
            doomed = [p for p in self._nodes if p == path or p.startswith(path + "/")]
            for victim in doomed:
                del self._nodes[victim]
            target = self.host(path)
            if node.is_dir:
                shutil.rmtree(target)
            elif node.link is None:
                target.unlink()

    def walk_files(self, path: str) -> Iterator[tuple[str, Path]]:
        """Every regular file under a directory, as (path relative to it, host path), sorted."""
        path = normalize(path)
        with self._lock:
            prefix = path.rstrip("/") + "/"
            found = sorted(
                p
                for p, n in self._nodes.items()
                if p.startswith(prefix) and not n.is_dir and n.link is None
            )
        for virtual in found:
            yield virtual.removeprefix(prefix), self.host(virtual)

    def walk_links(self, path: str) -> list[tuple[str, str]]:
        """Every symbolic link under a directory, as (path relative to it, target), sorted."""
        path = normalize(path)
        with self._lock:
            prefix = path.rstrip("/") + "/"
            return sorted(
                (p.removeprefix(prefix), n.link)
                for p, n in self._nodes.items()
                if p.startswith(prefix) and n.link is not None
            )

    def usage_bytes(self) -> int:
        total = 0
        for directory, _dirs, files in os.walk(self.root):
            for name in files:
                info = os.lstat(os.path.join(directory, name))
                if stat.S_ISREG(info.st_mode):
                    total += info.st_size
        return total

    def destroy(self) -> None:
        with self._lock:
            self._nodes.clear()
            shutil.rmtree(self.root, ignore_errors=True)
