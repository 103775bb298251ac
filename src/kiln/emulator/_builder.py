"""The rootfs builder stand-in (`tl-rootfs-build --spec S --metadata-out M`).

It is honest about what it is: it checks the spec the way the real builder needs it, logs one line
per Dockerfile instruction (RUN steps are logged, not executed), packs the extracted context and
the spec into a snapshot archive, uploads it to the signed target and writes ``metadata.json``.
The snapshot archive holds ``spec.json`` and ``context/<path>`` for every context file.
"""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import time
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import attrs

from kiln.emulator._blobs import BLOB_ROUTE, check_key, uri_for
from kiln.emulator._context import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CommandContext
from kiln.emulator._process import SIGKILL, Exit, exited
from kiln.emulator._registry import needed_images, pull_refusal
from kiln.emulator._vfs import ROOT, FsError

SNAPSHOT_FORMAT = "durable_archive_v1"
# spec.json keys that carry secrets (registry credentials): never copied into a snapshot.
SECRET_SPEC_KEYS = frozenset({"dockerConfigJson"})
# The snapshot is a stand-in, so it is a plain tar: compressing it would only take CPU away from
# the client being measured when both run on one machine (benchmarks).
SNAPSHOT_TAR_MODE: Final = "w"
_MS = 1000.0
_OOM_DMESG = (
    "[ 4242.000001] Out of memory: Killed process 4242 (tl-rootfs-build) total-vm:8388608kB, "
    "anon-rss:4194304kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:8192kB oom_score_adj:0"
)
_ENOSPC_LOG = "tl-rootfs-build: writing rootfs image: No space left on device (os error 28, ENOSPC)"


class _SpecProblem(Exception):
    """The spec is unusable; the message names the field."""


@attrs.frozen
class _Args:
    spec: str
    metadata_out: str


@attrs.frozen
class _Spec:
    raw: dict[str, Any]
    dockerfile: str
    context_dir: str | None
    base_image: str
    rootfs_disk_bytes: int
    snapshot_uri: str
    upload_key: str


def _parse_args(args: list[str]) -> _Args:
    values = dict(zip(args[::2], args[1::2], strict=False))
    if len(args) % 2 or set(values) != {"--spec", "--metadata-out"}:
        raise _SpecProblem(f"usage: tl-rootfs-build --spec PATH --metadata-out PATH (got {args!r})")
    return _Args(values["--spec"], values["--metadata-out"])


def instructions(dockerfile: str) -> list[str]:
    """Logical Dockerfile lines: continuations joined, blank and comment lines dropped."""
    steps, open_step = [], ""
    for physical in dockerfile.splitlines():
        text = physical.strip()
        if not open_step and (not text or text.startswith("#")):
            continue
        joined = f"{open_step} {text}".strip()
        if joined.endswith("\\"):
            open_step = joined.removesuffix("\\").strip()
        else:
            steps.append(joined)
            open_step = ""
    if open_step:
        steps.append(open_step)
    return steps


def _string(spec: dict[str, Any], key: str) -> str:
    value = spec.get(key)
    if not isinstance(value, str) or not value:
        raise _SpecProblem(f"spec field {key!r} must be a non-empty string, got {value!r}")
    return value


def _upload_key(spec: dict[str, Any], snapshot_uri: str) -> str:
    """The blob key the signed upload target names, which must be the snapshot's own uri."""
    upload = spec.get("upload")
    if not isinstance(upload, dict):
        raise _SpecProblem("spec has no 'upload' object: nowhere to upload the snapshot")
    urls = upload.get("partUrls") if upload.get("kind") == "s3_multipart" else [upload.get("url")]
    url = urls[0] if isinstance(urls, list) and urls else None
    path = urlsplit(url).path if isinstance(url, str) else ""
    if not path.startswith(BLOB_ROUTE):
        raise _SpecProblem(f"upload target {url!r} is not a URL signed by this emulator")
    key = check_key(unquote(path.removeprefix(BLOB_ROUTE)))
    if uri_for(key) != snapshot_uri:
        raise _SpecProblem(
            f"upload target {uri_for(key)} does not match snapshotUri {snapshot_uri}"
        )
    return key


def _check_spec(ctx: CommandContext, spec: dict[str, Any]) -> _Spec:
    disk = spec.get("rootfsDiskBytes")
    if not isinstance(disk, int) or isinstance(disk, bool) or disk <= 0:
        raise _SpecProblem(f"spec field 'rootfsDiskBytes' must be a positive integer, got {disk!r}")
    context_dir = _string(spec, "contextDir")
    if not context_dir.startswith("/"):
        raise _SpecProblem(f"spec field 'contextDir' must be an absolute path, got {context_dir!r}")
    extracted = ctx.sandbox.fs.is_dir(context_dir)
    # An import has no context to extract; the client still names the directory.
    if not extracted and "importImageReference" not in spec:
        raise _SpecProblem(f"contextDir {context_dir} does not exist in the sandbox")
    snapshot_uri = _string(spec, "snapshotUri")
    return _Spec(
        raw=spec,
        dockerfile=_string(spec, "dockerfile"),
        context_dir=context_dir if extracted else None,
        base_image=_string(spec, "baseImage"),
        rootfs_disk_bytes=disk,
        snapshot_uri=snapshot_uri,
        upload_key=_upload_key(spec, snapshot_uri),
    )


def _read_spec(ctx: CommandContext, path: str) -> _Spec:
    try:
        raw = json.loads(ctx.sandbox.fs.read_file(ctx.path(path), ROOT))
    except FsError as problem:
        raise _SpecProblem(f"cannot read spec: {problem.message}") from None
    except ValueError as problem:
        raise _SpecProblem(f"spec {path} is not valid JSON: {problem}") from None
    if not isinstance(raw, dict):
        raise _SpecProblem(f"spec {path} must be a JSON object")
    return _check_spec(ctx, raw)


def _pack(ctx: CommandContext, spec: _Spec) -> int:
    """Write the snapshot archive straight to the blob the signed URL names; returns its size.

    The builder runs inside the emulator, so "uploading" to its own signed URL is writing the
    object that URL names; streaming to the file keeps a large context out of memory.
    """
    with (
        ctx.blobs.writer(spec.upload_key) as handle,
        tarfile.open(fileobj=handle, mode=SNAPSHOT_TAR_MODE) as archive,
    ):
        # Registry credentials never leave the builder: what is stored is the spec without them.
        stored = {k: v for k, v in spec.raw.items() if k not in SECRET_SPEC_KEYS}
        spec_bytes = json.dumps(stored, indent=2, sort_keys=True).encode()
        info = tarfile.TarInfo("spec.json")
        info.size = len(spec_bytes)
        archive.addfile(info, io.BytesIO(spec_bytes))
        if spec.context_dir is not None:
            for relative, host in ctx.sandbox.fs.walk_files(spec.context_dir):
                archive.add(host, arcname=f"context/{relative}", recursive=False)
            for relative, target in ctx.sandbox.fs.walk_links(spec.context_dir):
                link = tarfile.TarInfo(f"context/{relative}")
                link.type, link.linkname = tarfile.SYMTYPE, target
                archive.addfile(link)
    return ctx.blobs.size(spec.upload_key)


def _metadata(spec: _Spec, size: int) -> dict[str, Any]:
    kind = spec.raw.get("rootfsNodeKind", "base")
    metadata: dict[str, Any] = {
        "snapshot_id": spec.raw.get("snapshotId"),
        "snapshot_uri": spec.snapshot_uri,
        "snapshot_format_version": SNAPSHOT_FORMAT,
        "snapshot_size_bytes": size,
        "rootfs_disk_bytes": spec.rootfs_disk_bytes,
        "rootfs_node_kind": kind,
    }
    parent = spec.raw.get("parent")
    if kind == "diff" and isinstance(parent, dict):
        metadata["parent_manifest_uri"] = parent.get("parentManifestUri")
    return metadata


async def _log_steps(ctx: CommandContext, spec: _Spec) -> None:
    started = time.monotonic()
    ctx.process.emit("tl-rootfs-build (kiln emulator stand-in): RUN steps are logged, not executed")
    kind = spec.raw.get("rootfsNodeKind", "base")
    ctx.process.emit(
        f"base image {spec.base_image}; {kind} rootfs of {spec.rootfs_disk_bytes} bytes"
    )
    await log_steps_and_progress(ctx, instructions(spec.dockerfile), started)


async def log_steps_and_progress(ctx: CommandContext, steps: list[str], started: float) -> None:
    """What both builder stand-ins print: each step, then the injected progress lines, paced,
    and then wait out the injected duration counted from ``started`` (a monotonic time)."""
    behaviour = ctx.behaviour
    pace = behaviour.line_pace_ms / _MS
    for number, step in enumerate(steps, start=1):
        ctx.process.emit(f"Step {number}/{len(steps)} : {step}")
        await asyncio.sleep(pace)
    for number in range(1, behaviour.log_lines + 1):
        ctx.process.emit(f"progress {number}/{behaviour.log_lines}")
        await asyncio.sleep(pace)
    remaining = behaviour.duration_ms / _MS - (time.monotonic() - started)
    await asyncio.sleep(max(0.0, remaining))


def _local_references(spec: _Spec) -> list[str]:
    """Images the build takes from registered templates rather than from a registry."""
    local = [
        entry["reference"]
        for entry in spec.raw.get("additionalLocalImages") or []
        if isinstance(entry, dict) and isinstance(entry.get("reference"), str)
    ]
    if spec.raw.get("rootfsNodeKind") == "diff":
        local.append(spec.base_image)
    return local


def _pull(ctx: CommandContext, spec: _Spec) -> Exit | None:
    """Pull what the build needs; an image on a private registry needs its credentials."""
    private = ctx.private_registries
    if not private:
        return None
    for image in needed_images(spec.dockerfile, _local_references(spec)):
        ctx.process.emit(f"pulling {image}")
        refusal = pull_refusal(image, private, spec.raw.get("dockerConfigJson"))
        if refusal is not None:
            ctx.err(refusal)
            return exited(EXIT_FAILURE)
    return None


def injected_failure(ctx: CommandContext) -> Exit | None:
    """The failure the builder behaviour injects (both builder stand-ins honour it), or None."""
    behaviour = ctx.behaviour
    if behaviour.oom_kill:
        ctx.sandbox.dmesg.append(_OOM_DMESG)
        ctx.err("Killed")
        return Exit(signal=SIGKILL, oom_killed=True)
    if behaviour.enospc:
        ctx.sandbox.disk_full = True
        ctx.err(_ENOSPC_LOG)
        return exited(EXIT_FAILURE)
    if behaviour.exit_code:
        ctx.err(f"tl-rootfs-build: failed (injected exit code {behaviour.exit_code})")
        return exited(behaviour.exit_code)
    if behaviour.signal:
        return Exit(signal=behaviour.signal)
    return None


async def run_builder(ctx: CommandContext, args: list[str]) -> Exit:
    if ctx.user != ROOT:
        ctx.err('tl-rootfs-build: must run as root (start the process with "user": "root")')
        return exited(EXIT_FAILURE)
    try:
        parsed = _parse_args(args)
        spec = _read_spec(ctx, parsed.spec)
    except _SpecProblem as problem:
        ctx.err(f"tl-rootfs-build: {problem}")
        return exited(EXIT_USAGE)
    refused = _pull(ctx, spec)
    if refused is not None:
        return refused
    await _log_steps(ctx, spec)
    failure = injected_failure(ctx)
    if failure is not None:
        return failure
    size = await asyncio.to_thread(_pack, ctx, spec)
    ctx.process.emit(f"snapshot uploaded to {spec.snapshot_uri} ({size} bytes)")
    metadata = json.dumps(_metadata(spec, size), indent=2).encode()
    ctx.sandbox.fs.write_file(ctx.path(parsed.metadata_out), metadata, ROOT)
    ctx.process.emit(f"metadata written to {parsed.metadata_out}")
    return exited(EXIT_OK)
