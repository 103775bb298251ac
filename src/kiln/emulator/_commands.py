"""The built-in command table of a virtual sandbox.

Nothing here starts a host process: each command the build protocol uses is reimplemented against
the sandbox's virtual filesystem, and anything else exits 127 like an unknown program would.
"""

from __future__ import annotations

import asyncio
import shlex
import tarfile
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path, PurePosixPath

import attrs

from kiln.emulator._builder import run_builder
from kiln.emulator._context import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    REMOTE_BUILD_DIR,
    CommandContext,
)
from kiln.emulator._image_builder import BUILDER_PROGRAM, run_image_builder
from kiln.emulator._process import Exit, exited
from kiln.emulator._sandbox import Sandbox
from kiln.emulator._vfs import FsError, normalize

EXIT_NOT_FOUND = 127
_DF_PATHS = (REMOTE_BUILD_DIR, "/var/lib/docker", "/")
_DF_HEADER = "Filesystem     1024-blocks      Used Available Capacity Mounted on"
_KIB = 1024
_PERCENT = 100
# A program may be named bare or by its usual absolute location.
_BIN_DIRS = ("/bin/", "/usr/bin/", "/usr/local/bin/", "/sbin/", "/usr/sbin/")


Handler = Callable[[CommandContext, list[str]], Awaitable[Exit]]


class _Usage(Exception):
    """Bad arguments to a built-in; the message is what a real tool would print."""


def program_name(command: str) -> str:
    for directory in _BIN_DIRS:
        if command.startswith(directory):
            return command.removeprefix(directory)
    return command


async def run_command(ctx: CommandContext, command: str, args: list[str]) -> Exit:
    name = program_name(command)
    handler = _TABLE.get(name)
    if handler is None:
        ctx.err(f"{command}: command not found")
        return exited(EXIT_NOT_FOUND)
    try:
        return await handler(ctx, args)
    except _Usage as problem:
        ctx.err(f"{name}: {problem}")
        return exited(EXIT_USAGE)
    except FsError as problem:
        ctx.err(f"{name}: {problem.message}")
        return exited(EXIT_FAILURE)


def _octal_mode(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError:
        raise _Usage(f"invalid mode '{text}' (the emulator accepts octal modes only)") from None


async def _true(_ctx: CommandContext, _args: list[str]) -> Exit:
    return exited(EXIT_OK)


async def _mkdir(ctx: CommandContext, args: list[str]) -> Exit:
    parents, mode, paths = False, None, []
    words = iter(args)
    for word in words:
        if word in ("-p", "--parents"):
            parents = True
        elif word == "-m":
            mode = _octal_mode(next(words, ""))
        elif word.startswith("-m"):
            mode = _octal_mode(word.removeprefix("-m").lstrip("="))
        elif word.startswith("-"):
            raise _Usage(f"invalid option -- '{word}'")
        else:
            paths.append(word)
    if not paths:
        raise _Usage("missing operand")
    for path in paths:
        if mode is None:
            ctx.sandbox.fs.mkdir(ctx.path(path), ctx.user, parents=parents)
        else:
            ctx.sandbox.fs.mkdir(ctx.path(path), ctx.user, parents=parents, mode=mode)
    return exited(EXIT_OK)


async def _chmod(ctx: CommandContext, args: list[str]) -> Exit:
    if len(args) < 2 or args[0].startswith("-"):
        raise _Usage("usage: chmod OCTAL-MODE PATH...")
    mode = _octal_mode(args[0])
    for path in args[1:]:
        ctx.sandbox.fs.chmod(ctx.path(path), mode, ctx.user)
    return exited(EXIT_OK)


async def _rm(ctx: CommandContext, args: list[str]) -> Exit:
    flags = "".join(a[1:] for a in args if a.startswith("-"))
    if set(flags) - set("rRf"):
        raise _Usage(f"invalid option in '{flags}' (supported: -r, -f)")
    paths = [a for a in args if not a.startswith("-")]
    recursive, force = bool(set(flags) & set("rR")), "f" in flags
    for path in paths:
        try:
            ctx.sandbox.fs.remove(ctx.path(path), ctx.user, recursive=recursive)
        except FsError as problem:
            if not (force and problem.kind == "not_found"):
                raise
    return exited(EXIT_OK)


@attrs.frozen
class _TarJob:
    archive: str
    destination: str


_NO_SAME_OWNER = "--no-same-owner"


def _parse_tar(ctx: CommandContext, args: list[str]) -> _TarJob:
    if not args:
        raise _Usage("usage: tar -x[z]f ARCHIVE -C DIR")
    flags, rest = args[0].lstrip("-"), args[1:]
    if "x" not in flags or not flags.endswith("f") or set(flags) - set("xzf"):
        raise _Usage(f"unsupported flags '{args[0]}' (the emulator extracts only: -x[z]f ARCHIVE)")
    if not rest:
        raise _Usage("option requires an argument -- 'f'")
    archive, rest = rest[0], rest[1:]
    # Ownership is not modelled (files belong to whoever extracts them), which is what
    # --no-same-owner asks of root.
    rest = [word for word in rest if word != _NO_SAME_OWNER]
    destination = ctx.cwd
    if rest[:1] == ["-C"] and len(rest) == 2:
        destination = rest[1]
    elif rest:
        raise _Usage(f"unexpected arguments {rest!r} (expected: -C DIR [--no-same-owner])")
    return _TarJob(ctx.path(archive), ctx.path(destination))


# GNU tar's own words, so a user reading a failed build's log sees what a real builder prints.
_TAR_LEADING_SLASH = "tar: Removing leading `/' from member names"
_TAR_LEADING_SLASH_LINKS = "tar: Removing leading `/' from hard link targets"
_TAR_FAILED = "tar: Exiting with failure status due to previous errors"


@attrs.define
class _TarReport:
    """What tar prints: warnings (exit 0 still) and errors (exit 2 at the end)."""

    warnings: list[str] = attrs.field(factory=list)
    errors: list[str] = attrs.field(factory=list)

    def warn_once(self, line: str) -> None:
        if line not in self.warnings:
            self.warnings.append(line)


def _member_path(report: _TarReport, name: str, warning: str) -> str | None:
    """The member's path relative to the destination, or None when tar refuses it."""
    relative = name.lstrip("/")
    if relative != name:
        report.warn_once(warning)
    if ".." in PurePosixPath(relative).parts:
        report.errors.append(f"tar: {name}: Member name contains '..'")
        return None
    return relative


def _extract_member(
    ctx: CommandContext, archive: tarfile.TarFile, member: tarfile.TarInfo, target: str, job: str
) -> None:
    fs = ctx.sandbox.fs
    if member.isdir():
        fs.mkdir(target, ctx.user, parents=True)
        return
    fs.mkdir(str(PurePosixPath(target).parent), ctx.user, parents=True)
    existing = fs.node(target)
    if existing is not None and not existing.is_dir:
        # GNU tar unlinks what is in the way before it extracts a member over it.
        fs.remove(target, ctx.user)
    if member.issym():
        fs.symlink(target, member.linkname, ctx.user)
    elif member.islnk():
        fs.hardlink(target, normalize(f"{job}/{member.linkname.lstrip('/')}"), ctx.user)
    elif member.isreg():
        source = archive.extractfile(member)
        assert source is not None  # a regular member always has data
        fs.copy_in(target, source, ctx.user, member.mode & 0o777)
    else:
        # Devices and FIFOs: what GNU tar says when the sandbox user may not create them.
        raise FsError("permission", f"{member.name}: Cannot mknod: Operation not permitted")


def _extract(ctx: CommandContext, host_archive: Path, destination: str) -> _TarReport:
    """Unpack files, directories and links as GNU tar does, into the virtual filesystem.

    A leading '/' is stripped (a warning) and a member or hard link target containing '..' is
    refused (an error), so an archive can never write outside the destination. Symbolic links
    are link entries of the virtual filesystem, whatever they point at: never host symlinks.
    """
    report = _TarReport()
    with tarfile.open(host_archive, "r:*") as archive:
        for member in archive:
            name = _member_path(report, member.name, _TAR_LEADING_SLASH)
            if name in (None, "", "."):
                continue
            if member.islnk():
                linked = _member_path(report, member.linkname, _TAR_LEADING_SLASH_LINKS)
                if linked is None:
                    continue
            try:
                _extract_member(
                    ctx, archive, member, normalize(f"{destination}/{name}"), destination
                )
            except FsError as problem:
                report.errors.append(f"tar: {problem.message}")
    return report


async def _tar(ctx: CommandContext, args: list[str]) -> Exit:
    job = _parse_tar(ctx, args)
    host_archive = ctx.sandbox.fs.readable_host_path(job.archive, ctx.user)
    if not ctx.sandbox.fs.is_dir(job.destination):
        raise FsError("not_found", f"{job.destination}: Cannot open: No such file or directory")
    try:
        report = await asyncio.to_thread(_extract, ctx, host_archive, job.destination)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as bad:
        # Not a tar, not gzip, or cut short: what a client uploading a truncated archive sees.
        ctx.err(f"tar: {job.archive}: This does not look like a tar archive ({bad})")
        return exited(EXIT_USAGE)
    for line in report.warnings + report.errors:
        ctx.err(line)
    if report.errors:
        ctx.err(_TAR_FAILED)
        return exited(EXIT_USAGE)
    return exited(EXIT_OK)


def df_lines(sandbox: Sandbox) -> list[str]:
    """`df -P` for each diagnostic path that exists; a full disk (ENOSPC fault) shows 100%."""
    total_kib = sandbox.disk_mb * _KIB
    used_kib = total_kib if sandbox.disk_full else -(-sandbox.fs.usage_bytes() // _KIB)
    percent = -(-used_kib * _PERCENT // total_kib) if total_kib else _PERCENT
    row = f"/dev/vda1 {total_kib:>14} {used_kib:>9} {total_kib - used_kib:>9} {percent:>7}% /"
    lines = []
    for path in _DF_PATHS:
        if sandbox.fs.is_dir(path):
            lines += [_DF_HEADER, row]
    return lines


# A shell reports a child killed by signal N as exit status 128 + N; it is not killed itself.
_SIGNALLED_EXIT_BASE = 128
_AND = "&&"


async def _sh(ctx: CommandContext, args: list[str]) -> Exit:
    """`sh -c SCRIPT`: the client's two failure-diagnostic scripts (they read emulator state),
    and lists of simple commands joined by ``&&`` (each run from the command table, the first
    failure ending the list with its status, as a shell does)."""
    script = args[1] if len(args) == 2 and args[0] in ("-c", "-lc") else ""
    if "dmesg" in script:
        lines = list(ctx.sandbox.dmesg)
    elif "df -P" in script:
        lines = df_lines(ctx.sandbox)
    else:
        commands = _and_list(script)
        if commands is None:
            ctx.err(
                "sh: the emulator runs its diagnostic scripts (dmesg, df) and lists of simple"
                " commands joined by &&: syntax not understood"
            )
            return exited(EXIT_USAGE)
        return await _run_and_list(ctx, commands)
    for line in lines:
        ctx.process.emit(line)
    return exited(EXIT_OK)


def _and_list(script: str) -> list[list[str]] | None:
    """The simple commands of ``cmd && cmd && ...``; None for anything else (pipes, ``;``,
    redirections, variables, ``||``): the emulator does not pretend to run those."""
    try:
        lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
    except ValueError:
        return None
    commands: list[list[str]] = [[]]
    for word in words:
        if word == _AND:
            commands.append([])
        elif set(word) <= set(_SHELL_PUNCTUATION) or "$" in word:
            return None
        else:
            commands[-1].append(word)
    return commands if all(commands) else None


_SHELL_PUNCTUATION = "();<>|&"


async def _run_and_list(ctx: CommandContext, commands: list[list[str]]) -> Exit:
    for command, *args in commands:
        end = await run_command(ctx, command, args)
        if end.exit_code == EXIT_OK:
            continue
        if end.signal is not None:
            return exited(_SIGNALLED_EXIT_BASE + end.signal)
        return exited(end.exit_code if end.exit_code is not None else EXIT_FAILURE)
    return exited(EXIT_OK)


async def _echo(ctx: CommandContext, args: list[str]) -> Exit:
    ctx.process.emit(" ".join(args))
    return exited(EXIT_OK)


async def _cat(ctx: CommandContext, args: list[str]) -> Exit:
    for path in args:
        data = ctx.sandbox.fs.read_file(ctx.path(path), ctx.user)
        for line in data.decode(errors="replace").splitlines():
            ctx.process.emit(line)
    return exited(EXIT_OK)


_TABLE: dict[str, Handler] = {
    "true": _true,
    "mkdir": _mkdir,
    "chmod": _chmod,
    "rm": _rm,
    "tar": _tar,
    "sh": _sh,
    "echo": _echo,
    "cat": _cat,
    "tl-rootfs-build": run_builder,
    BUILDER_PROGRAM: run_image_builder,
}
