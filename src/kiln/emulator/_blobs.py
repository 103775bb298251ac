"""The emulator's object store: ``s3://kiln-emulator/<key>`` is the file ``<root>/<key>``."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from kiln.emulator._errors import EmulatorError, bad_request, not_found

BUCKET = "kiln-emulator"
URI_PREFIX = f"s3://{BUCKET}/"
# The HTTP face of the store; signed URLs point here and need no token, like a real pre-signed URL.
BLOB_ROUTE = "/_emulator/blobs/"


def check_key(key: str) -> str:
    """A store key is a relative POSIX path that cannot leave the store."""
    parts = PurePosixPath(key).parts
    if not key or key.startswith("/") or "\x00" in key or any(p in ("..", ".") for p in parts):
        raise bad_request(f"invalid blob key {key!r}: must be a relative path without '..'")
    return str(PurePosixPath(*parts))


def key_from_uri(uri: str) -> str:
    if not uri.startswith(URI_PREFIX):
        raise bad_request(f"blob uri {uri!r} is not in this emulator's store ({URI_PREFIX}...)")
    return check_key(uri.removeprefix(URI_PREFIX))


def uri_for(key: str) -> str:
    return URI_PREFIX + check_key(key)


class BlobStore:
    """Blobs as plain files; writes land under a temporary name first so readers never see halves."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        """A file to fill; it becomes the object only when the block ends without an error."""
        target = self.path(key)
        # A name of this writer's own: two emulators on one data directory may write one key.
        partial = target.with_name(f"{target.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            handle = partial.open("wb")
        except (NotADirectoryError, FileExistsError, IsADirectoryError):
            # Keys are paths, so "a" and "a/b" cannot both be objects.
            raise EmulatorError(
                409,
                "BLOB_KEY_CONFLICT",
                f"cannot store {uri_for(key)}: it clashes with another key",
            ) from None
        try:
            with handle:
                yield handle
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)

    def write(self, key: str, data: bytes) -> int:
        with self.writer(key) as handle:
            handle.write(data)
        return len(data)

    def write_part(self, key: str, upload_id: str, part_number: int, data: bytes) -> None:
        """Store one multipart part, then reassemble the object from the consecutive parts present.

        Real S3 needs a separate "complete" call; the signed-URL contract kiln relies on has none,
        so the emulator keeps the object current after every part.
        """
        parts_dir = self.path(key).with_name(self.path(key).name + f".{check_key(upload_id)}.parts")
        parts_dir.mkdir(parents=True, exist_ok=True)
        (parts_dir / f"{part_number:05d}").write_bytes(data)
        assembled = bytearray()
        number = 1
        while (part := parts_dir / f"{number:05d}").exists():
            assembled += part.read_bytes()
            number += 1
        self.write(key, bytes(assembled))

    def read(self, key: str) -> bytes:
        target = self.path(key)
        if not target.is_file():
            raise not_found(f"no blob at {uri_for(key)}", code="BLOB_NOT_FOUND")
        return target.read_bytes()

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
