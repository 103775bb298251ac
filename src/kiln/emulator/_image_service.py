"""The Image Service's state and behaviour: admissions, contexts, build runs and images.

A build goes ``pending/awaiting_context`` (a Dockerfile build waits for its context to be uploaded
and sealed; an import skips this) → ``pending/starting_builder`` (a builder sandbox boots, with
the profile's start delay) → ``running/executing`` (``tl-image-builder`` runs in it; clients
follow its log through the proxy) → ``running/snapshotting`` → ``running/publishing`` →
``succeeded/finished`` with the image as its result, or ``failed``/``cancelled``. The builder
sandbox is terminated whichever way the build ends.

Builds live in memory, like the legacy path's prepared builds; images are registered in the
template store, so they survive a restart and the legacy lookup sees them too (in the
content-addressed format, which legacy clients refuse as a parent). One name has one current
build: admitting a later build of a name retires the earlier finished one (``not_found`` from
then on), and an unfinished one refuses the admission (``image_build_in_progress``).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import secrets
import tarfile
import time
from collections.abc import AsyncIterator
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import attrs
import structlog

from kiln.emulator._blobs import key_from_uri, uri_for
from kiln.emulator._image_builder import (
    BUILDER_COMMAND,
    BUILDER_DIR,
    BUILDER_PROGRAM,
    CREDENTIALS_KEY,
    SPEC_PATH,
)
from kiln.emulator._image_models import (
    ALREADY_CANCELLED,
    ALREADY_COMPLETED,
    ALREADY_FAILED,
    AWAITING_CONTEXT,
    CANCELLED,
    EXECUTING,
    FAILED,
    FINISHED,
    IMAGE_ID_PREFIX,
    NOT_ADMITTED,
    OUTCOME_CANCELLED,
    PENDING,
    PUBLISHING,
    RUNNING,
    SNAPSHOTTING,
    STARTING_BUILDER,
    SUCCEEDED,
    TERMINAL,
    BuildRequest,
    BuildWire,
    CancelRequest,
    ContextUpload,
    ImageServiceError,
    ImageWire,
    invalid,
    not_found,
)
from kiln.emulator._process import Exit, Process, exited
from kiln.emulator._sandbox import PENDING as SANDBOX_PENDING
from kiln.emulator._sandbox import Sandbox
from kiln.emulator._vfs import ROOT

if TYPE_CHECKING:
    from kiln.emulator._state import EmulatorState

_log = structlog.get_logger("kiln.emulator")

CAS_FORMAT = "content_addressed_streaming_v1"
CONTEXT_KEY_PREFIX = "image-contexts/"
SNAPSHOT_KEY_PREFIX = "images/"
# The context's member names inside a snapshot archive, as the legacy stand-in stores them.
SNAPSHOT_CONTEXT_PREFIX = "context/"
BUILDER_IMAGE = "tensorlake/image-builder:emulated"
# The official client follows the builder's log through the lifecycle API in its own namespace,
# whose default is this one; builder sandboxes live there so that it finds them.
BUILDER_NAMESPACE = "default"
# Nobody talks to a builder sandbox unless a client follows its log, so its idle timeout must
# outlast any build the emulator runs.
BUILDER_TIMEOUT_SECS = 3600
# A Dockerfile build whose context is not sealed this long after admission fails; otherwise a
# client that gave up (the official one refuses a context above max_bytes after admission) would
# hold its image name "in progress" for ever.
CONTEXT_DEADLINE_S = 600
# Reported as `operation_deadline_ms`; the official client waits until then plus an allowance.
OPERATION_DEADLINE_S = 7200
_ID_BYTES = 12
# Upload bytes are written in batches this big: a worker-thread hop per batch costs nothing next
# to the disk write, and a large context never sits in memory.
WRITE_BATCH_BYTES = 4 * 1024 * 1024
_MIB = 1024 * 1024
_MS = 1000


def _now_ms() -> int:
    return int(time.time() * _MS)


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / _MS)) + f".{ms % _MS:03d}Z"


@attrs.define(eq=False)
class ImageBuild:
    """One admitted build; ``client_request_id`` is its admission's Idempotency-Key."""

    id: str
    request: BuildRequest
    client_request_id: str
    created_ms: int
    status: str = PENDING
    phase: str = AWAITING_CONTEXT
    attempt_no: int = 0
    updated_ms: int = attrs.field(factory=_now_ms)
    builder_sandbox_id: str | None = None
    error: str | None = None
    image: ImageWire | None = None
    context_size: int | None = None
    context_digest: str | None = None
    sealed: bool = False
    task: asyncio.Task[None] | None = attrs.field(default=None, repr=False)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def context_key(self) -> str:
        return CONTEXT_KEY_PREFIX + self.id + ".tar"

    def update(self, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(self, name, value)
        self.updated_ms = _now_ms()

    def finish(self, status: str, error: str | None = None) -> None:
        """End the build; an ended build stays as it ended (a cancel that won stays cancelled)."""
        if not self.terminal:
            self.update(status=status, phase=FINISHED, error=error)

    def wire(self) -> BuildWire:
        return BuildWire(
            build_id=self.id,
            status=self.status,
            kind=self.request.kind,
            name=self.request.name,
            phase=self.phase,
            attempt_no=self.attempt_no,
            client_request_id=self.client_request_id,
            builder_sandbox_id=self.builder_sandbox_id,
            error=self.error,
            result=self.image,
            operation_deadline_ms=self.created_ms + OPERATION_DEADLINE_S * _MS,
            created_at_ms=self.created_ms,
            updated_at_ms=self.updated_ms,
        )

    def describe(self) -> dict[str, Any]:
        """Introspection (``/_emulator/image-builds``): the record plus what only the service
        knows; never the registry credentials."""
        request = self.request
        return {
            **self.wire().to_wire(),
            "dockerfile_path": request.dockerfile_path,
            "image_ref": request.image_ref,
            "build_args": request.build_args,
            "parents": [attrs.asdict(parent) for parent in request.parents],
            "disk_mb": request.disk_mb,
            "public": request.public,
            "builder_resources": {"cpus": request.cpus, "memory_mb": request.memory_mb},
            "registry_credentials_forwarded": request.registry_credentials_json is not None,
            "context_size": self.context_size,
            "context_digest": self.context_digest,
            "sealed": self.sealed,
        }


def image_of(template: dict[str, Any]) -> ImageWire:
    """A registered content-addressed template as ``/images/v4`` shows it."""
    return ImageWire(
        id=template["id"],
        name=template["name"],
        snapshot_id=template["snapshotId"],
        global_=template["public"],
        physical_size_bytes=template["snapshotSizeBytes"],
        logical_size_bytes=template["rootfsDiskBytes"],
        created_at=template["createdAt"],
        updated_at=template["updatedAt"],
    )


def _is_image(template: dict[str, Any] | None) -> bool:
    return template is not None and template.get("snapshotFormatVersion") == CAS_FORMAT


def _member_name(member: tarfile.TarInfo) -> str:
    """A context member's path, refused when it would leave the context (tar-slip)."""
    name = member.name.removeprefix("./").rstrip("/")
    parts = PurePosixPath(name).parts
    if not name or name.startswith("/") or ".." in parts:
        raise ValueError(f"build context member {member.name!r} leaves the context")
    return name


def _copy_context(source: tarfile.TarFile, archive: tarfile.TarFile) -> None:
    for member in source:
        if member.isdir():
            continue
        info = tarfile.TarInfo(SNAPSHOT_CONTEXT_PREFIX + _member_name(member))
        info.mode = member.mode
        if member.issym():
            info.type, info.linkname = tarfile.SYMTYPE, member.linkname
            archive.addfile(info)
            continue
        data = source.extractfile(member)
        if data is None:
            continue
        # A hard link's bytes are its target's (tarfile reads them through the link).
        info.size = source.getmember(member.linkname).size if member.islnk() else member.size
        archive.addfile(info, data)


def _failure(sandbox: Sandbox, process: Process, end: Exit) -> str:
    """The build's ``error``: how the builder ended, and the last thing it said on stderr."""
    if sandbox.terminated_reason is not None:
        return f"builder sandbox {sandbox.id} terminated mid-build: {sandbox.terminated_reason}"
    if end.oom_killed:
        how = f"{BUILDER_PROGRAM} was killed by the OOM killer (out of memory)"
    elif end.signal is not None:
        how = f"{BUILDER_PROGRAM} was killed by signal {end.signal}"
    else:
        how = f"{BUILDER_PROGRAM} exited with status {end.exit_code}"
    said = [event["line"] for event in process.output if event.get("stream") == "stderr"]
    return f"{how}: {said[-1]}" if said else how


class ImageService:
    """Every build and the images they published, for one emulator."""

    def __init__(self, state: EmulatorState) -> None:
        self._state = state
        self.builds: dict[str, ImageBuild] = {}
        self._by_request_id: dict[str, str] = {}

    # -- admission -----------------------------------------------------------------------------

    def admit(self, request_id: str, request: BuildRequest) -> tuple[ImageBuild, bool]:
        """The build for this admission, and whether it is a replay of an earlier one."""
        known = self._by_request_id.get(request_id)
        if known is not None and known in self.builds:
            build = self.builds[known]
            if build.request.fingerprint() != request.fingerprint():
                raise ImageServiceError(
                    409,
                    "client_request_id_mismatch",
                    f"Idempotency-Key {request_id} already admitted build {build.id} with a "
                    "different request; send a fresh key for a different build",
                    build_id=build.id,
                )
            return build, True
        self._check_parents(request)
        self._refuse_if_active(request.name)
        self._retire(request.name)
        build = ImageBuild(
            id="build_" + secrets.token_hex(_ID_BYTES),
            request=request,
            client_request_id=request_id,
            created_ms=_now_ms(),
        )
        self.builds[build.id] = build
        self._by_request_id[request_id] = build.id
        if request.kind == "import":
            self._launch(build)
        return build, False

    def _check_parents(self, request: BuildRequest) -> None:
        templates = self._state.templates
        for parent in request.parents:
            if not _is_image(templates.by_id(parent.public_id)):
                raise invalid(
                    f"parent {parent.reference!r} names image {parent.public_id}, which does not "
                    "exist (build or import it first)"
                )

    def _refuse_if_active(self, name: str) -> None:
        for build in self.builds.values():
            self._expire(build)
            if build.request.name == name and not build.terminal:
                raise ImageServiceError(
                    409,
                    "image_build_in_progress",
                    f"image {name!r} already has an unfinished build {build.id}; cancel it "
                    "or wait for it before starting another",
                    image_name=name,
                    active_build_id=build.id,
                    active_kind=build.request.kind,
                    active_status=build.status,
                )

    def _retire(self, name: str) -> None:
        """A later build of a name retires the earlier (finished) one."""
        for build in [b for b in self.builds.values() if b.request.name == name]:
            del self.builds[build.id]
            self._by_request_id.pop(build.client_request_id, None)
            self._state.blobs.path(build.context_key).unlink(missing_ok=True)

    def _expire(self, build: ImageBuild) -> None:
        overdue = _now_ms() > build.created_ms + CONTEXT_DEADLINE_S * _MS
        if build.phase == AWAITING_CONTEXT and not build.terminal and overdue:
            build.finish(
                FAILED,
                f"the build context was not uploaded and sealed within {CONTEXT_DEADLINE_S} s",
            )

    # -- lookups -------------------------------------------------------------------------------

    def get(self, build_id: str) -> ImageBuild:
        build = self.builds.get(build_id)
        if build is None:
            raise not_found(
                f"build {build_id} not found: it was never admitted, or it was retired (a "
                "finished build is kept only while it is its image's current build)",
                build_id=build_id,
            )
        self._expire(build)
        return build

    def image_by_name(self, name: str) -> ImageWire:
        template = self._state.templates.by_name(name)
        if not _is_image(template):
            raise not_found(f"no image named {name!r}")
        assert template is not None
        return image_of(template)

    def image_by_id(self, image_id: str) -> ImageWire:
        template = self._state.templates.by_id(image_id)
        if not _is_image(template):
            raise not_found(f"no image {image_id}")
        assert template is not None
        return image_of(template)

    # -- the context ---------------------------------------------------------------------------

    def upload_target(self, build: ImageBuild, url: str) -> ContextUpload | None:
        """The upload capability while the build waits for its context, else None."""
        if build.phase != AWAITING_CONTEXT or build.terminal:
            return None
        return ContextUpload(url=url, max_bytes=self._state.config.image_context_max_bytes)

    async def receive_context(
        self, build: ImageBuild, body: AsyncIterator[bytes], declared: int | None
    ) -> int:
        """Store an uploaded context (a plain tar), checking ``max_bytes`` as it streams in."""
        if self.upload_target(build, "") is None:
            raise _not_accepted(build, "context")
        limit = self._state.config.image_context_max_bytes
        if declared is not None and declared > limit:
            raise _too_large(build, declared, limit)
        digest, size, pending = hashlib.sha256(), 0, bytearray()
        with self._state.blobs.writer(build.context_key) as handle:
            async for chunk in body:
                size += len(chunk)
                if size > limit:
                    raise _too_large(build, size, limit)
                digest.update(chunk)
                pending += chunk
                if len(pending) >= WRITE_BATCH_BYTES:
                    await asyncio.to_thread(handle.write, pending)
                    pending = bytearray()
            await asyncio.to_thread(handle.write, pending)
            # A seal that came while this body was on its way fixed the context already: this
            # upload must not replace what the seal's digest vouches for.
            if self.upload_target(build, "") is None:
                raise _not_accepted(build, "context")
        build.update(context_size=size, context_digest=digest.hexdigest())
        return size

    def seal(self, build: ImageBuild, digest: str) -> None:
        """Seal the uploaded context with the digest the client computed, and start the build.

        A repeated seal with the same digest is a no-op (the answer to the first may be lost).
        """
        if build.sealed and digest == build.context_digest:
            return
        if build.request.kind == "import" or build.sealed or build.terminal:
            raise _not_accepted(build, "seal")
        if build.context_digest is None:
            raise ImageServiceError(
                409,
                "context_not_uploaded",
                f"build {build.id} has no context yet: upload it to context_upload.url first",
                build_id=build.id,
            )
        if digest != build.context_digest:
            raise ImageServiceError(
                400,
                "digest_mismatch",
                f"digest {digest} does not match the uploaded context (sha256 "
                f"{build.context_digest}, {build.context_size} bytes): upload it again, then seal",
                build_id=build.id,
            )
        build.update(sealed=True)
        self._launch(build)

    # -- cancel --------------------------------------------------------------------------------

    def cancel(self, request: CancelRequest) -> tuple[str, ImageBuild | None]:
        if request.build_id is not None:
            build: ImageBuild | None = self.get(request.build_id)
        else:
            known = self._by_request_id.get(request.client_request_id or "")
            build = self.builds.get(known) if known else None
        if build is None:
            return NOT_ADMITTED, None
        self._expire(build)
        already = {
            CANCELLED: ALREADY_CANCELLED,
            SUCCEEDED: ALREADY_COMPLETED,
            FAILED: ALREADY_FAILED,
        }
        if build.status in already:
            return already[build.status], build
        build.finish(CANCELLED)
        self._stop(build, "image build cancelled")
        return OUTCOME_CANCELLED, build

    def _stop(self, build: ImageBuild, reason: str) -> None:
        if build.task is not None:
            build.task.cancel()
        sandbox = self._state.sandboxes.get(build.builder_sandbox_id or "")
        if sandbox is not None:
            sandbox.terminate(reason)

    def stop_all(self, reason: str) -> None:
        """End every unfinished build (the emulator stops or is reset)."""
        for build in self.builds.values():
            if not build.terminal:
                build.finish(FAILED, f"the emulator stopped the build: {reason}")
            self._stop(build, reason)

    def clear(self) -> None:
        self.stop_all("emulator reset")
        self.builds.clear()
        self._by_request_id.clear()

    # -- the run -------------------------------------------------------------------------------

    def _launch(self, build: ImageBuild) -> None:
        from kiln.emulator._state import SandboxRequest  # the state module imports this one

        request = build.request
        sandbox = self._state.create_sandbox(
            SandboxRequest(
                namespace=BUILDER_NAMESPACE,
                image=BUILDER_IMAGE,
                cpus=request.cpus,
                memory_mb=request.memory_mb,
                disk_mb=request.disk_mb,
                timeout_secs=BUILDER_TIMEOUT_SECS,
            )
        )
        build.update(phase=STARTING_BUILDER, builder_sandbox_id=sandbox.id)
        build.task = asyncio.create_task(self._run(build, sandbox))

    async def _run(self, build: ImageBuild, sandbox: Sandbox) -> None:
        try:
            if not await _until_running(sandbox):
                build.finish(
                    FAILED,
                    f"builder sandbox {sandbox.id} terminated before it ran: "
                    f"{sandbox.terminated_reason}",
                )
                return
            process = self._start_builder(build, sandbox)
            build.update(status=RUNNING, phase=EXECUTING, attempt_no=build.attempt_no + 1)
            end = await process.wait()
            if end != exited(0):
                build.finish(FAILED, _failure(sandbox, process, end))
                return
            build.update(phase=SNAPSHOTTING)
            template = await asyncio.to_thread(self._snapshot, build)
            build.update(phase=PUBLISHING)
            self._publish(build, template)
        except (OSError, ValueError, tarfile.TarError) as problem:
            build.finish(FAILED, f"snapshot failed: {problem}")
        finally:
            sandbox.terminate("image build finished")

    def _start_builder(self, build: ImageBuild, sandbox: Sandbox) -> Process:
        from kiln.emulator._state import ProcessRequest  # the state module imports this one

        request = build.request
        spec: dict[str, Any] = {**_recipe(build), "context_key": build.context_key}
        if request.registry_credentials_json is not None:
            spec[CREDENTIALS_KEY] = request.registry_credentials_json
        sandbox.fs.mkdir(BUILDER_DIR, ROOT, parents=True)
        sandbox.fs.write_file(SPEC_PATH, json.dumps(spec).encode(), ROOT)
        return self._state.start_process(
            sandbox,
            ProcessRequest(
                command=BUILDER_COMMAND,
                args=["--spec", SPEC_PATH],
                root=True,
                working_dir=BUILDER_DIR,
                timeout_s=None,
            ),
        )

    def _snapshot(self, build: ImageBuild) -> dict[str, Any]:
        """Pack the snapshot (what was built from: the request and the context) into the blob
        store; returns the image's template, its id the snapshot's SHA-256."""
        request = build.request
        key = f"{SNAPSHOT_KEY_PREFIX}{build.id}.tar"
        recipe = _recipe(build)
        blobs = self._state.blobs
        with blobs.writer(key) as handle, tarfile.open(fileobj=handle, mode="w") as archive:
            data = json.dumps(recipe, indent=2, sort_keys=True).encode()
            info = tarfile.TarInfo("spec.json")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
            if request.kind == "dockerfile":
                with tarfile.open(blobs.file(build.context_key), mode="r:") as source:
                    _copy_context(source, archive)
        digest = hashlib.sha256()
        with blobs.file(key).open("rb") as snapshot:
            while chunk := snapshot.read(_MIB):
                digest.update(chunk)
        return {
            "snapshotId": digest.hexdigest(),
            "snapshotUri": uri_for(key),
            "snapshotSizeBytes": blobs.size(key),
        }

    def _publish(self, build: ImageBuild, snapshot: dict[str, Any]) -> None:
        """Register the image under its name: a rebuild keeps the name's image id (it names the
        current image) and replaces what it points at."""
        request = build.request
        templates = self._state.templates
        existing = templates.by_name(request.name)
        now = _iso(_now_ms())
        current = existing if _is_image(existing) else None
        template: dict[str, Any] = {
            "id": current["id"] if current else IMAGE_ID_PREFIX + secrets.token_hex(_ID_BYTES),
            "name": request.name,
            **snapshot,
            "snapshotFormatVersion": CAS_FORMAT,
            "rootfsDiskBytes": request.disk_mb * _MIB,
            "rootfsNodeKind": "diff" if request.parents else "base",
            "public": request.public,
            "buildId": build.id,
            "parentImageIds": [parent.public_id for parent in request.parents],
            "createdAt": current["createdAt"] if current else now,
            "updatedAt": now,
        }
        if build.terminal:
            return
        templates.register(template)
        if current is not None and current["snapshotUri"] != template["snapshotUri"]:
            # The name's previous snapshot is nobody's any more.
            self._state.blobs.path(key_from_uri(current["snapshotUri"])).unlink(missing_ok=True)
        build.update(image=image_of(template))
        build.finish(SUCCEEDED)


async def _until_running(sandbox: Sandbox) -> bool:
    """Wait out the sandbox's boot; False when it was terminated first."""
    while sandbox.status(time.monotonic()) == SANDBOX_PENDING:
        await asyncio.sleep(max(0.0, sandbox.ready_at - time.monotonic()))
    return sandbox.terminated_reason is None


def _not_accepted(build: ImageBuild, what: str) -> ImageServiceError:
    return ImageServiceError(
        409,
        "context_not_accepted",
        f"build {build.id} takes no {what} now (kind {build.request.kind}, status "
        f"{build.status}, phase {build.phase})",
        build_id=build.id,
    )


def _too_large(build: ImageBuild, size: int, limit: int) -> ImageServiceError:
    return ImageServiceError(
        413,
        "context_too_large",
        f"the build context of {build.id} is {size} bytes or more, above max_bytes ({limit})",
        build_id=build.id,
    )


def _recipe(build: ImageBuild) -> dict[str, Any]:
    """What a build is made from, as the builder's spec and the snapshot both record it."""
    request = build.request
    return {
        "build_id": build.id,
        "kind": request.kind,
        "name": request.name,
        "dockerfile_path": request.dockerfile_path,
        "image_ref": request.image_ref,
        "build_args": request.build_args,
        "parents": [attrs.asdict(parent) for parent in request.parents],
    }
