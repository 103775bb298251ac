"""Reading the walked files safely: never through a link, and failing if one changed since."""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterator

from kiln.plan.context._entries import PATH_SEP, ContextEntry
from kiln.plan.context._errors import changed, unreadable, vanished

# How much of a file is read at once: large enough for throughput, small enough to bound memory.
_READ_SIZE = 1 << 20


# Every directory on the way to a file is opened relative to its parent without following a
# link: a parent swapped for a symlink after the walk cannot lead the read out of the context
# (O_NOFOLLOW on the file alone guards only the last component).
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NOFOLLOW: a file swapped for a symlink since the walk must not upload the link's target.
# O_NONBLOCK: a file swapped for a FIFO must not hang the open.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Files:
    """Opens the context's files through directory descriptors, one component at a time.

    The descriptor of the last directory used is kept, since the archive reads a directory's
    files one after another; at most three descriptors are open at once, however deep the tree.
    """

    def __init__(self, root: str) -> None:
        self._root = root
        self._root_fd = -1
        self._dir_rel = ""
        self._dir_fd = -1

    def __enter__(self) -> Files:
        try:
            self._root_fd = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise vanished(".") from exc
        except PermissionError as exc:
            raise unreadable(".", exc) from exc
        except OSError as exc:
            raise changed(".", "it is no longer a directory") from exc
        return self

    def __exit__(self, *_exc: object) -> None:
        self._forget_dir()
        os.close(self._root_fd)

    def open(self, rel: str) -> int:
        """A descriptor for the regular file (or whatever now stands) at ``rel``."""
        parent, _sep, name = rel.rpartition(PATH_SEP)
        return os.open(name, _FILE_FLAGS, dir_fd=self._dir(parent))

    def _dir(self, rel_dir: str) -> int:
        if not rel_dir:
            return self._root_fd
        if rel_dir != self._dir_rel or self._dir_fd < 0:
            self._forget_dir()
            self._dir_fd = _open_dir_below(self._root_fd, rel_dir)
            self._dir_rel = rel_dir
        return self._dir_fd

    def _forget_dir(self) -> None:
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
        self._dir_fd, self._dir_rel = -1, ""


def _open_dir_below(root_fd: int, rel_dir: str) -> int:
    """Open ``rel_dir`` under ``root_fd`` component by component, never through a link."""
    current = root_fd
    done: list[str] = []
    try:
        for part in rel_dir.split(PATH_SEP):
            done.append(part)
            try:
                opened = os.open(part, _DIR_FLAGS, dir_fd=current)
            except FileNotFoundError as exc:
                raise vanished(PATH_SEP.join(done)) from exc
            except PermissionError as exc:
                raise unreadable(PATH_SEP.join(done), exc) from exc
            except OSError as exc:  # ELOOP, ENOTDIR: a link or a file stands there now
                where = PATH_SEP.join(done)
                raise changed(where, "it is no longer a directory") from exc
            if current != root_fd:
                os.close(current)
            current = opened
    except BaseException:
        if current != root_fd:
            os.close(current)
        raise
    return current


def read_file(files: Files, entry: ContextEntry) -> Iterator[bytes]:
    """The file's bytes in pieces, failing if it is no longer what the walk saw."""
    try:
        fd = files.open(entry.path)
    except FileNotFoundError as exc:
        raise vanished(entry.path) from exc
    except PermissionError as exc:
        raise unreadable(entry.path, exc) from exc
    except OSError as exc:
        raise changed(entry.path, "it is no longer a regular file") from exc
    with open(fd, "rb", buffering=0) as handle:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise changed(entry.path, "it is no longer a regular file")
        if st.st_size != entry.size:
            raise changed(entry.path, f"its size went from {entry.size} to {st.st_size} bytes")
        remaining = entry.size
        while remaining:
            piece = _read(handle, entry.path, min(_READ_SIZE, remaining))
            if not piece:
                raise changed(entry.path, f"it shrank below {entry.size} bytes")
            remaining -= len(piece)
            yield piece
        if _read(handle, entry.path, 1):
            raise changed(entry.path, f"it grew beyond {entry.size} bytes")


def _read(handle: io.FileIO, rel: str, size: int) -> bytes:
    try:
        # None means "would block", which a regular file never does: treat it as no data.
        return handle.read(size) or b""
    except OSError as exc:
        raise unreadable(rel, exc) from exc
