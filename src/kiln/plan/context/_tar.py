"""The tar framing: deterministic GNU headers, padding and the end-of-archive blocks."""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterable, Iterator

from kiln.plan.context._entries import ContextEntry, EntryKind

_KIND_TYPE = {
    EntryKind.FILE: tarfile.REGTYPE,
    EntryKind.DIR: tarfile.DIRTYPE,
    EntryKind.SYMLINK: tarfile.SYMTYPE,
}
# surrogateescape round-trips file names that are not valid UTF-8 byte for byte.
_NAME_ENCODING = ("utf-8", "surrogateescape")
_NAME_FIELD = 100
# The size field holds 11 octal digits; larger sizes need GNU's base-256 form.
_OCTAL_SIZE_LIMIT = 8**11
_CHECKSUM_FIELD = slice(148, 156)


def tar_stream(
    entries: Iterable[ContextEntry], content: Callable[[ContextEntry], Iterable[bytes]]
) -> Iterator[bytes]:
    """The uncompressed tar of ``entries``, a regular file's bytes taken from ``content``."""
    written = 0
    for entry in entries:
        header = _header(entry)
        written += len(header)
        yield header
        if entry.kind is EntryKind.FILE:
            yield from content(entry)
            padding = -entry.size % tarfile.BLOCKSIZE
            written += entry.size + padding
            yield tarfile.NUL * padding
    # Two zero blocks end the archive; padding to a whole record is what tar(1) writes.
    written += 2 * tarfile.BLOCKSIZE
    yield tarfile.NUL * (2 * tarfile.BLOCKSIZE + (-written % tarfile.RECORDSIZE))


def _header(entry: ContextEntry) -> bytes:
    """The entry's GNU tar header, byte-identical to ``tarfile``'s own.

    Headers are written here for the common case because ``TarInfo.tobuf`` dominates the time
    of archiving many small files; long names and huge sizes are left to ``tarfile``.
    """
    name = entry.path.encode(*_NAME_ENCODING) + (b"/" if entry.kind is EntryKind.DIR else b"")
    link = entry.link_target.encode(*_NAME_ENCODING)
    too_long = len(name) > _NAME_FIELD or len(link) > _NAME_FIELD
    if too_long or entry.size >= _OCTAL_SIZE_LIMIT:
        return _tarfile_header(entry)
    block = bytearray(tarfile.BLOCKSIZE)
    block[0 : len(name)] = name
    # mode, uid 0, gid 0, size, mtime 0, checksum placeholder (spaces), type, link name, magic;
    # user and group names and the device fields stay empty (all NUL).
    fields = b"%07o\0" % entry.mode + b"0000000\0" * 2 + b"%011o\0" % entry.size
    fields += b"00000000000\0" + b" " * 8 + _KIND_TYPE[entry.kind]
    block[100 : 100 + len(fields)] = fields
    block[157 : 157 + len(link)] = link
    block[257:265] = tarfile.GNU_MAGIC
    block[_CHECKSUM_FIELD] = b"%06o\0 " % sum(block)
    return bytes(block)


def _tarfile_header(entry: ContextEntry) -> bytes:
    info = tarfile.TarInfo(entry.path)
    info.mode = entry.mode
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    info.type = _KIND_TYPE[entry.kind]
    info.size = entry.size
    info.linkname = entry.link_target
    return info.tobuf(tarfile.GNU_FORMAT, *_NAME_ENCODING)
