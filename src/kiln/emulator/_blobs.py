"""The emulator's object store: ``s3://kiln-emulator/<key>`` is the file ``<root>/<key>``."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.parse import urlencode

from kiln.emulator._errors import EmulatorError, bad_request, not_found

BUCKET = "kiln-emulator"
URI_PREFIX = f"s3://{BUCKET}/"
# The HTTP face of the store; signed URLs point here and need no token, like a real pre-signed URL:
# their `sig` parameter (an HMAC of the key under the data directory's own signing key) is the
# permission, so a guarded emulator (--api-key) still lets the builder's upload through.
BLOB_ROUTE = "/_emulator/blobs/"
SIGNATURE_PARAM = "sig"
SIGNING_KEY_FILE = "signing.key"
_SIGNING_KEY_BYTES = 32
# Linux's NAME_MAX: one path component of at most this many bytes.
NAME_MAX = 255
_COPY_CHUNK = 1024 * 1024
UPLOAD_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def check_key(key: str) -> str:
    """A store key is a relative POSIX path that cannot leave the store."""
    parts = PurePosixPath(key).parts
    if not key or key.startswith("/") or "\x00" in key or any(p in ("..", ".") for p in parts):
        raise bad_request(f"invalid blob key {key!r}: must be a relative path without '..'")
    if any(len(part.encode()) > NAME_MAX for part in parts):
        raise bad_request(f"invalid blob key: a component is longer than {NAME_MAX} bytes")
    return str(PurePosixPath(*parts))


def check_upload_id(upload_id: str) -> str:
    if not UPLOAD_ID.match(upload_id):
        raise bad_request(
            f"invalid uploadId {upload_id[:40]!r}: letters, digits, '.', '_' and '-' only",
            code="INVALID_UPLOAD_ID",
        )
    return upload_id


def _signing_key(root: Path) -> bytes:
    """The data directory's signing key, created once (several emulators may share it)."""
    path = root / SIGNING_KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as handle:
        key = secrets.token_bytes(_SIGNING_KEY_BYTES)
        handle.write(key)
    return key


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
        self._signing_key = _signing_key(root.parent)

    def signature(self, key: str) -> str:
        return hmac.new(self._signing_key, check_key(key).encode(), hashlib.sha256).hexdigest()

    def signed_url(self, base: str, key: str, **query: str) -> str:
        """A pre-signed URL for ``key`` on the emulator at ``base``."""
        params = urlencode({**query, SIGNATURE_PARAM: self.signature(key)})
        return f"{base}{BLOB_ROUTE}{check_key(key)}?{params}"

    def signature_valid(self, key: str, given: str) -> bool:
        try:
            expected = self.signature(key)
        except EmulatorError:
            return False
        return hmac.compare_digest(expected, given)

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

    @contextlib.contextmanager
    def part_writer(self, key: str, upload_id: str, part_number: int) -> Iterator[BinaryIO]:
        """A file to fill with one multipart part; when it is complete the object is reassembled
        from the consecutive parts present, streamed, never whole in memory.

        Real S3 needs a separate "complete" call; the signed-URL contract kiln relies on has none,
        so the emulator keeps the object current after every part.
        """
        target = self.path(key)
        parts_dir = target.with_name(f"{target.name}.{check_upload_id(upload_id)}.parts")
        parts_dir.mkdir(parents=True, exist_ok=True)
        part = parts_dir / f"{part_number:05d}"
        partial = part.with_name(f"{part.name}.{secrets.token_hex(4)}.partial")
        try:
            with partial.open("wb") as handle:
                yield handle
            os.replace(partial, part)
        finally:
            partial.unlink(missing_ok=True)
        with self.writer(key) as whole:
            number = 1
            while (piece := parts_dir / f"{number:05d}").exists():
                with piece.open("rb") as source:
                    shutil.copyfileobj(source, whole, _COPY_CHUNK)
                number += 1

    def file(self, key: str) -> Path:
        """The object's file, for streaming it out."""
        target = self.path(key)
        if not target.is_file():
            raise not_found(f"no blob at {uri_for(key)}", code="BLOB_NOT_FOUND")
        return target

    def read(self, key: str) -> bytes:
        return self.file(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
