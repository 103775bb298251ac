"""upload: stream the context archive and spec.json into the sandbox, side by side.

A context of one archive is extracted by the builder's process (run_builder): the upload is two
PUTs and nothing else. A context split in parts is extracted part by part while the next part is
on the wire, each by one root process (make the directory, extract, remove the part).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from kiln._progress import FULL_PERCENT, ProgressGate, percent_done
from kiln.api import ChunkedUploadRefused, ProxyClient
from kiln.machine._outcome import SUCCEEDED, Outcome
from kiln.machine._services import Services
from kiln.machine._state import BuildState
from kiln.machine.handlers._remote import run_steps
from kiln.machine.protocol import (
    REMOTE_ARCHIVE_PATH,
    REMOTE_SPEC_PATH,
    REMOTE_UPLOAD_DIR,
    build_spec,
    directory_step,
    extraction_steps,
    read_docker_config_json,
    registry_of,
    spec_json_bytes,
)
from kiln.plan import BuildPlan
from kiln.plan.context import ContextArchive
from kiln.plan.sizing import format_bytes

# Upload progress cadence (docs/protocol.md#context-upload): every tenth when the size is known, and
# every 64 MiB.
UPLOAD_REPORT_PERCENT_STEP = 10
UPLOAD_REPORT_BYTES = 64 << 20
# Reading a spooled archive back for a Content-Length upload: large enough to keep the socket
# busy, small enough to bound memory.
SPOOL_READ_CHUNK = 1 << 20
# A context with more file content than this goes as several archives of about this size: the
# sandbox extracts each one while the next is on the wire, instead of extracting everything once
# the upload has ended (bench_large_context: 300 MB over 200 Mbit/s, the context phase from about
# 0.75x to about 0.6x of the official client's). Smaller contexts go as one archive, as before.
PART_BYTES = 64 << 20
PART_ARCHIVE_PATH = REMOTE_UPLOAD_DIR + "/kiln-context-{index}.tar.gz"
# A context with at most this much file content is archived in memory first and sent with its
# length, as the reference sends it: no proxy can refuse it for want of a length (the cloud's
# does, which cost a refused chunked PUT before the spooled one), and producing it takes well
# under the round trip the overlap of a streamed upload would save.
IN_MEMORY_CONTEXT_BYTES = 4 << 20
# A context this small is archived on the event loop itself (well under a millisecond of
# compression): handing it to an archiving thread and back cost more than the work.
INLINE_ARCHIVE_BYTES = 64 << 10
# `FROM scratch` pulls nothing.
SCRATCH = "scratch"
# Extracting a context takes seconds (a minute for a few GB on a slow disk); one that runs for
# twenty minutes is stuck, and the daemon kills it within the upload phase's deadline.
EXTRACT_TIMEOUT_S = 1200.0


async def upload(state: BuildState, services: Services) -> Outcome:
    """Re-entry: sends the context again unless state.context_digest records it extracted;
    rewrites spec.json."""
    proxy = services.proxy(state)
    if state.plan.is_import or state.context_digest is not None:
        await _write_spec(state, services, proxy)
    else:
        context_dir = state.plan.context_dir or "."
        services.status(state, "Uploading build context...")
        services.status(state, f"Creating build context archive from {context_dir}...")
        parts = _archive(state, services).split(PART_BYTES)
        if len(parts) > 1:
            await _upload_in_parts(state, services, proxy, parts)
        else:
            # spec.json does not depend on the context: the two PUTs go side by side.
            await _all_settled(
                _send_context(state, services, proxy, parts[0]),
                _write_spec(state, services, proxy),
            )
    return SUCCEEDED


async def _all_settled(*steps: Awaitable[object]) -> None:
    """Run ``steps`` concurrently until all end; then raise the first one's error, if any."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _write_spec(state: BuildState, services: Services, proxy: ProxyClient) -> None:
    prepared = state.prepared or {}
    # Read at the last moment and never stored: registry credentials are secrets.
    docker_config_json = await read_docker_config_json(
        [registry_of(image) for image in _pulled_images(state.plan)],
        functools.partial(services.warning, state),
    )
    spec = build_spec(
        prepared,
        dockerfile=state.plan.dockerfile_text,
        base_image=state.plan.base_image,
        import_reference=state.plan.import_image_reference,
        rootfs_disk_bytes=state.rootfs_disk_bytes or 0,
        docker_config_json=docker_config_json,
        docker_compat=state.options.docker_compat,
    )
    await proxy.put_file(REMOTE_SPEC_PATH, spec_json_bytes(spec))
    _answered(state)


def _answered(state: BuildState) -> None:
    """The proxy answered a request (upload's are the first on the legacy path): failures get
    diagnostics from now on."""
    state.proxy_ready = True


def _pulled_images(plan: BuildPlan) -> list[str]:
    """The images the builder may pull from a registry: the base (unless a stage or scratch),
    the imported one and every other image the Dockerfile names."""
    images = [*plan.additional_image_references]
    if plan.import_image_reference:
        images.append(plan.import_image_reference)
    if not plan.base_image_is_internal_stage and plan.base_image != SCRATCH:
        images.append(plan.base_image)
    return images


async def _send_context(
    state: BuildState, services: Services, proxy: ProxyClient, archive: ContextArchive
) -> ContextArchive:
    report = functools.partial(services.status, state)
    if archive.uncompressed_bytes <= IN_MEMORY_CONTEXT_BYTES:
        await _put_in_memory(proxy, archive, report)
    elif state.chunked_upload_refused:
        await _put_spooled(proxy, archive, report)
    else:
        try:
            # The archive is produced while it is sent: no local copy, overlap of CPU and network.
            await _stream(proxy, REMOTE_ARCHIVE_PATH, archive, report)
        except ChunkedUploadRefused:
            services.warning(
                state, "The server refused a streamed upload; sending the archive with a length"
            )
            state.chunked_upload_refused = True
            archive = _archive(state, services)
            await _put_spooled(proxy, archive, report)
    _answered(state)
    _report_sizes(state, services, [archive])
    return archive


def _report_sizes(state: BuildState, services: Services, archives: list[ContextArchive]) -> None:
    files = sum(archive.files for archive in archives)
    uncompressed = sum(archive.uncompressed_bytes for archive in archives)
    compressed = sum(archive.compressed_bytes for archive in archives)
    services.status(
        state,
        f"Build context: {files} files, {format_bytes(uncompressed)} uncompressed, "
        f"{format_bytes(compressed)} compressed",
    )


async def _upload_in_parts(
    state: BuildState, services: Services, proxy: ProxyClient, parts: list[ContextArchive]
) -> None:
    """Send the parts one after the other, each extracted while the next one is on the wire."""
    report = functools.partial(services.status, state)
    extractions: list[asyncio.Task[None]] = []
    try:
        for index, part in enumerate(parts):
            path = PART_ARCHIVE_PATH.format(index=index)
            await _put_part(state, services, proxy, part, path, report)
            if index == 0:
                services.status(state, "Untarring build context archive in builder sandbox...")
            extractions.append(asyncio.create_task(_untar(state, services, proxy, path)))
        _report_sizes(state, services, parts)
        await _all_settled(
            _all_extracted(state, services, extractions, parts), _write_spec(state, services, proxy)
        )
    finally:
        # After a failure, no extraction outlives the attempt.
        for extraction in extractions:
            extraction.cancel()
        await asyncio.gather(*extractions, return_exceptions=True)


async def _put_part(
    state: BuildState,
    services: Services,
    proxy: ProxyClient,
    part: ContextArchive,
    path: str,
    report: Callable[[str], None],
) -> None:
    if not state.chunked_upload_refused:
        try:
            await _stream(proxy, path, part, report)
            _answered(state)
            return
        except ChunkedUploadRefused:
            services.warning(
                state, "The server refused a streamed upload; sending the archive with a length"
            )
            state.chunked_upload_refused = True
    await _put_spooled(proxy, part, report, path)
    _answered(state)


async def _untar(state: BuildState, services: Services, proxy: ProxyClient, path: str) -> None:
    """Extract the part at ``path`` into the remote context directory, then delete it."""
    await run_steps(
        proxy,
        state.id,
        [directory_step(), *extraction_steps(path)],
        timeout=EXTRACT_TIMEOUT_S,
        log=functools.partial(services.build_log, state),
    )


async def _all_extracted(
    state: BuildState,
    services: Services,
    extractions: list[asyncio.Task[None]],
    parts: list[ContextArchive],
) -> None:
    await _all_settled(*extractions)
    # Only the whole context counts as extracted: a retry after a failed part sends all again.
    joined = "\n".join(part.digest for part in parts).encode()
    state.context_digest = f"sha256:{hashlib.sha256(joined).hexdigest()}"
    services.status(state, "Build context extracted; removed remote archive")


def _archive(state: BuildState, services: Services) -> ContextArchive:
    loop = asyncio.get_running_loop()

    def from_thread(message: str, emit: Callable[[BuildState, str], None]) -> None:
        # The archive is produced in a worker thread; events are delivered on the loop.
        loop.call_soon_threadsafe(emit, state, message)

    progress = _ArchiveProgress(lambda text: from_thread(text, services.status))
    return ContextArchive(
        state.plan.context_dir or ".",
        dockerfile=state.plan.dockerfile_path,
        on_progress=progress,
        on_warning=lambda text: from_thread(text, services.warning),
    )


class _ArchiveProgress:
    """Reports at 0 and 100 % and whenever the whole percent rises
    (docs/protocol.md#context-upload)."""

    def __init__(self, report: Callable[[str], None]) -> None:
        self._report = report
        self._gate = ProgressGate()

    def __call__(self, done: int, total: int) -> None:
        if self._gate.due(done, total):
            self._report(
                f"Creating build context archive: {_shown_percent(done, total)}% "
                f"({format_bytes(done)} / {format_bytes(total)})"
            )


async def _stream(
    proxy: ProxyClient, path: str, archive: ContextArchive, report: Callable[[str], None]
) -> None:
    """PUT the archive while it is produced; the producer thread stops when the PUT ends."""
    async with contextlib.aclosing(archive.achunks()) as chunks:
        await proxy.put_file(path, _sent(chunks, None, report))


async def _sent(
    chunks: AsyncIterator[bytes], total: int | None, report: Callable[[str], None]
) -> AsyncIterator[bytes]:
    """Pass ``chunks`` through, reporting upload progress (docs/protocol.md#context-upload).

    A streamed archive has no known total until it ends, so it reports every
    UPLOAD_REPORT_BYTES and once at the end; a spooled one reports every tenth as well.
    """
    gate = ProgressGate(percent_step=UPLOAD_REPORT_PERCENT_STEP, every_bytes=UPLOAD_REPORT_BYTES)
    sent = 0
    gate.due(sent, total)
    report(_upload_line(sent, total))
    async for chunk in chunks:
        yield chunk
        sent += len(chunk)
        if gate.due(sent, total):
            report(_upload_line(sent, total))
    if gate.last_due(sent):
        report(_upload_line(sent, sent))


def _upload_line(sent: int, total: int | None) -> str:
    prefix = "Uploading build context archive:"
    if total is None:
        # Streamed while it is produced: the final size is not known yet.
        return f"{prefix} {format_bytes(sent)} sent, still archiving"
    return f"{prefix} {_shown_percent(sent, total)}% ({format_bytes(sent)} / {format_bytes(total)})"


def _shown_percent(done: int, total: int) -> int:
    # An empty archive is all there: 100 %, not the 0 % a gate counts for a zero total.
    return FULL_PERCENT if total <= 0 else min(FULL_PERCENT, percent_done(done, total))


async def _put_in_memory(
    proxy: ProxyClient, archive: ContextArchive, report: Callable[[str], None]
) -> None:
    if archive.uncompressed_bytes <= INLINE_ARCHIVE_BYTES:
        data = b"".join(archive.chunks())
    else:
        data = b"".join([chunk async for chunk in archive.achunks()])
    await proxy.put_file(
        REMOTE_ARCHIVE_PATH, _sent(_one(data), len(data), report), length=len(data)
    )


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _put_spooled(
    proxy: ProxyClient,
    archive: ContextArchive,
    report: Callable[[str], None],
    remote_path: str = REMOTE_ARCHIVE_PATH,
) -> None:
    """Spool the archive to a temporary file, then PUT it with a Content-Length."""
    with tempfile.TemporaryDirectory(prefix="kiln-context-") as tmp:
        path = Path(tmp) / "context.tar.gz"
        await asyncio.to_thread(_write_chunks, archive, path)
        size = path.stat().st_size
        await proxy.put_file(remote_path, _sent(_read_chunks(path), size, report), length=size)


def _write_chunks(archive: ContextArchive, path: Path) -> None:
    with path.open("wb") as out:
        for chunk in archive.chunks():
            out.write(chunk)


async def _read_chunks(path: Path) -> AsyncIterator[bytes]:
    fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
    try:
        while chunk := await asyncio.to_thread(os.read, fd, SPOOL_READ_CHUNK):
            yield chunk
    finally:
        os.close(fd)
