"""The CAS machine's handlers (states/cas.toml): a build on the Image Service.

The wire is docs/image-service.md's. What is persisted, and why each handler may run twice:
the admission's Idempotency-Key is in the state from the submission on, so ``create_build``
sent again lands on the build the service admitted; the upload is accepted again until the
seal, and a seal repeated with the same digest is the same seal; a poll has no side effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from kiln.api import (
    STATUS_CANCELLED,
    STATUS_RUNNING,
    STATUS_SUCCEEDED,
    TERMINAL_STATUSES,
    CasBuild,
    CasImage,
    ContextUpload,
    ImageServiceClient,
    ProxyClient,
    is_transient,
)
from kiln.errors import ApiError, BuildError, UsageError
from kiln.machine._outcome import CANCELLED, SUCCEEDED, Outcome, fail, outcome_for, retry
from kiln.machine._services import Services
from kiln.machine._state import BuildState, CasProgress
from kiln.machine.protocol import read_docker_config_json, registry_of
from kiln.plan.context import ContextArchive, ExtraFile
from kiln.plan.sizing import format_bytes

# What the official client sends when the caller gives no disk size.
DEFAULT_DISK_MB = 10240
DEFAULT_BUILDER_CPUS = 2.0
DEFAULT_BUILDER_MEMORY_MB = 4096
# An image id pins a parent as it is, with no lookup.
IMAGE_ID_PREFIX = "image_"
# A content-digest pin (`cas-v1:<64 hex>`, the reference's older wire): the Image Service's
# parents are {reference, public_id} with an image id, and it offers no lookup by digest (an
# image's snapshot changes as it is rebuilt under the same id), so the official client refuses
# such a pin before any request, and kiln does too.
DIGEST_PIN_PREFIX = "cas-v1:"
# The official client polls some 45 ms after the seal, then every 3 s; kiln makes no more
# requests than it does (a build that ends within the first wait takes one poll).
FIRST_POLL_DELAY_S = 0.05
POLL_INTERVAL_S = 3.0
# The service's builder process, and how soon its log is looked at again after a follow ends
# while the build runs (the official client looks every second).
BUILDER_PROGRAM = "tl-image-builder"
FOLLOW_AGAIN_S = 1.0
# The Dockerfile of a plan whose Dockerfile is not inside its context goes in as this file.
EXTRA_DOCKERFILE = ".kiln/Dockerfile"
CAS_FORMAT = "content_addressed_streaming_v1"
_SPOOL_CHUNK_BYTES = 1 << 20


def progress(state: BuildState) -> CasProgress:
    if state.cas is None:
        raise BuildError(f"internal: state {state.state!r} of a CAS build without its progress")
    return state.cas


def _references(state: BuildState) -> list[str]:
    """The images the Dockerfile takes that the service may know, in the client's order."""
    plan = state.plan
    found: list[str] = []
    base = plan.base_image
    if not plan.base_image_is_internal_stage and "$" not in base and "@" not in base:
        found.append(base)
    found += [ref for ref in plan.additional_image_references if ref not in found]
    return found


def _digest_pin(reference: str) -> UsageError:
    return UsageError(
        f"FROM {reference} pins a content digest, which the Image Service no longer takes as a"
        " parent (the official client refuses it too)",
        hint="pin the parent by its image id instead (FROM image_<id>: the `id` of its build's"
        " result), or by its name (FROM <name>)",
    )


def _legacy_parent(reference: str) -> UsageError:
    return UsageError(
        f"{reference!r} is a legacy image, and CAS image builds cannot use legacy images as a base",
        hint=f"rebuild {reference!r} with --cas first, or build this image without --cas",
    )


async def resolve_names(state: BuildState, services: Services) -> Outcome:
    """Re-entry: looks the names up again (a lookup changes nothing)."""
    cas = progress(state)
    if state.plan.is_import:
        return SUCCEEDED
    images, platform = services.images(state), services.platform(state)
    references = _references(state)
    for reference in references:
        if reference.startswith(DIGEST_PIN_PREFIX):
            return fail(_digest_pin(reference))
    parents: list[dict[str, str]] = []
    try:
        for reference in references:
            if reference.startswith(IMAGE_ID_PREFIX):
                parents.append({"reference": reference, "public_id": reference})
                continue
            image = await images.image_by_name(reference)
            if image is not None:
                parents.append({"reference": reference, "public_id": image.id})
            elif await platform.get_template(reference) is not None:
                return fail(_legacy_parent(reference))
    except ApiError as error:
        return outcome_for(error)
    cas.parents = parents
    return SUCCEEDED


def _dockerfile_in_context(state: BuildState) -> str | None:
    """The Dockerfile's path inside the context, or None when it lies elsewhere."""
    plan = state.plan
    if plan.dockerfile_path is None:
        return None
    relative = os.path.relpath(plan.dockerfile_path, plan.context_dir or ".")
    return None if relative.startswith("..") else Path(relative).as_posix()


async def _registry_credentials(state: BuildState, services: Services) -> str | None:
    """The Docker config's credentials for the registries the build pulls from; read at the
    last moment and never stored."""
    parents = {parent["reference"] for parent in progress(state).parents}
    registries = [registry_of(ref) for ref in _references(state) if ref not in parents]
    if state.plan.is_import and state.plan.import_image_reference is not None:
        registries = [registry_of(state.plan.import_image_reference)]
    return await read_docker_config_json(registries, functools.partial(services.warning, state))


async def _admission(state: BuildState, services: Services) -> dict[str, Any]:
    plan, options, cas = state.plan, state.options, progress(state)
    body: dict[str, Any] = {"name": plan.name, "disk_mb": options.disk_mb or DEFAULT_DISK_MB}
    if plan.is_import:
        body |= {"kind": "import", "image_ref": plan.import_image_reference}
    else:
        body |= {
            "kind": "dockerfile",
            "dockerfile_path": _dockerfile_in_context(state) or EXTRA_DOCKERFILE,
            "build_args": dict(options.build_args),
            "parents": list(cas.parents),
        }
    if options.public:
        body["image_scope"] = "global"
    if options.cpus is not None or options.memory_mb is not None:
        body["builder_resources"] = {
            "cpus": options.cpus or DEFAULT_BUILDER_CPUS,
            "memory_mb": options.memory_mb or DEFAULT_BUILDER_MEMORY_MB,
        }
    credentials = await _registry_credentials(state, services)
    if credentials is not None:
        body["registry_credentials_json"] = credentials
    return body


async def create_build(state: BuildState, services: Services) -> Outcome:
    """Re-entry: sends the same Idempotency-Key, so the service answers the build it admitted."""
    cas = progress(state)
    services.status(state, "Creating CAS image build...")
    try:
        build = await services.images(state).create_build(
            await _admission(state, services), cas.request_id
        )
    except ApiError as error:
        return outcome_for(error)
    state.build_id = build.build_id
    _observe(state, build)
    if build.context_upload is not None:
        cas.upload_url = build.context_upload.url
        cas.max_bytes = build.context_upload.max_bytes
    elif not state.plan.is_import:
        # A replay of an admission whose context was sealed before this process died: the
        # service holds the context already, and takes no other.
        cas.sealed = True
    services.status(state, f"Build {build.build_id} accepted")
    return SUCCEEDED


def _spool(archive: ContextArchive, target: Path) -> tuple[int, str]:
    """Write the plain tar to ``target``; its size and SHA-256 (hex)."""
    digest, size = hashlib.sha256(), 0
    with target.open("wb") as handle:
        for piece in archive.tar_stream():
            digest.update(piece)
            size += len(piece)
            handle.write(piece)
    return size, digest.hexdigest()


def _archive(state: BuildState, services: Services) -> ContextArchive:
    plan = state.plan
    extras = []
    if _dockerfile_in_context(state) is None:
        extras.append(ExtraFile(EXTRA_DOCKERFILE, plan.dockerfile_text.encode()))
    loop = asyncio.get_running_loop()

    def warn(text: str) -> None:
        # The archive is written in a worker thread; events are delivered on the loop.
        loop.call_soon_threadsafe(services.warning, state, text)

    return ContextArchive(
        plan.context_dir or ".",
        dockerfile=plan.dockerfile_path,
        extra_files=extras,
        on_warning=warn,
    )


async def upload_context(state: BuildState, services: Services) -> Outcome:
    """Re-entry: archives and uploads again (the service takes a new upload until the seal)."""
    cas = progress(state)
    if state.plan.is_import or cas.sealed:
        return SUCCEEDED
    if cas.upload_url is None or cas.max_bytes is None:
        return fail(BuildError("the Image Service admitted the build without a context upload"))
    services.status(state, "Creating build context archive...")
    with tempfile.TemporaryDirectory(prefix="kiln-cas-") as spool_dir:
        path = Path(spool_dir) / "context.tar"
        size, digest = await asyncio.to_thread(_spool, _archive(state, services), path)
        if size > cas.max_bytes:
            return fail(
                UsageError(
                    f"build context is {format_bytes(size)}, above the Image Service's cap of "
                    f"{format_bytes(cas.max_bytes)}",
                    hint="exclude what the build does not need with .dockerignore",
                )
            )
        services.status(state, f"Uploading build context ({size} bytes)...")
        try:
            await services.images(state).upload_context(
                ContextUpload(cas.upload_url, cas.max_bytes), path
            )
        except ApiError as error:
            return outcome_for(error)
    cas.digest = digest
    return SUCCEEDED


async def seal_context(state: BuildState, services: Services) -> Outcome:
    """Re-entry: seals again with the same digest, which the service takes as the same seal."""
    cas = progress(state)
    if state.plan.is_import or cas.sealed:
        return SUCCEEDED
    if cas.digest is None or state.build_id is None:
        return fail(BuildError("internal: sealing a context that was not uploaded"))
    services.status(state, "Sealing build context...")
    try:
        build = await services.images(state).seal(state.build_id, cas.digest)
    except ApiError as error:
        return outcome_for(error)
    cas.sealed = True
    _observe(state, build)
    return SUCCEEDED


def _observe(state: BuildState, build: CasBuild) -> bool:
    """Record what a record says; True when its status or phase changed."""
    cas = progress(state)
    changed = (build.status, build.phase) != (cas.status, cas.phase)
    cas.status, cas.phase = build.status, build.phase
    return changed


def template_of(image: CasImage, public: bool) -> dict[str, Any]:
    """The image in the registered-template shape every kiln build returns (and the official
    client's CAS builds return)."""
    return {
        "id": image.id,
        "name": image.name,
        "snapshotId": image.snapshot_id,
        "snapshotUri": f"snapshot://{image.snapshot_id}",
        "snapshotFormatVersion": CAS_FORMAT,
        "snapshotSizeBytes": image.physical_size_bytes,
        "rootfsDiskBytes": image.logical_size_bytes,
        "rootfsNodeKind": "base",
        "public": public,
        "createdAt": image.created_at,
        "updatedAt": image.updated_at,
    }


def _ended(state: BuildState, services: Services, build: CasBuild) -> Outcome:
    if build.status == STATUS_SUCCEEDED:
        if build.result is None:
            return fail(BuildError(f"build {build.build_id} succeeded but reports no image"))
        state.result = template_of(build.result, state.options.public)
        services.status(state, f"CAS image {state.plan.name!r} registered ({build.result.id})")
        return SUCCEEDED
    if build.status == STATUS_CANCELLED:
        return CANCELLED
    reason = build.error or "no error recorded"
    return fail(BuildError(f"build {build.build_id} failed: {reason}"))


async def wait_build(state: BuildState, services: Services) -> Outcome:
    """Re-entry: polls again (a poll changes nothing); the builder's log is followed again from
    its start, and lines already delivered are not delivered twice."""
    if state.build_id is None:
        return fail(BuildError("internal: waiting for a build that was not admitted"))
    return await _poll(state, services, state.build_id)


async def _poll(state: BuildState, services: Services, build_id: str) -> Outcome:
    images: ImageServiceClient = services.images(state)
    polled = False
    following: asyncio.Task[None] | None = None
    await asyncio.sleep(FIRST_POLL_DELAY_S)
    try:
        while True:
            try:
                build = await images.get_build(build_id)
            except ApiError as error:
                # A poll that answered is progress: the budget bounds consecutive failed polls.
                return retry(error, progressed=polled) if is_transient(error) else fail(error)
            polled = True
            if _observe(state, build):
                attempt = f"attempt {build.attempt_no}, phase {build.phase}"
                services.status(state, f"Build {build.build_id}: {build.status} ({attempt})")
            if build.ended:
                return _ended(state, services, build)
            if following is None and build.status == STATUS_RUNNING and build.builder_sandbox_id:
                following = asyncio.create_task(
                    _follow_builder(state, services, build.builder_sandbox_id)
                )
            await asyncio.sleep(POLL_INTERVAL_S)
    finally:
        if following is not None:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following


async def _follow_builder(state: BuildState, services: Services, sandbox_id: str) -> None:
    """Deliver the service's builder log as build_log events, as the official client follows
    it: the builder sandbox's address from the lifecycle API, the ``tl-image-builder`` process
    through its proxy, each follow replaying from the first line. Runs until the poll that
    sees the build end cancels it; a failure to follow is a warning, never the build's."""
    proxy: ProxyClient | None = None
    while True:
        try:
            if proxy is None:
                info = await services.lifecycle(state).get_sandbox(sandbox_id)
                proxy = services.proxy_of(state, sandbox_id, info.sandbox_url, info.routing_hint)
            processes = await proxy.list_processes()
            builder = next((p for p in processes if _is_builder(p.command)), None)
            if builder is not None:
                await _deliver(state, services, proxy, builder.pid)
        except ApiError as error:
            # A sandbox still starting, or already ended with its build: look again until
            # the poll says how the build went. Anything else will not get better.
            if not is_transient(error):
                services.warning(
                    state, f"Could not follow the builder's log ({sandbox_id}): {error}"
                )
                return
        await asyncio.sleep(FOLLOW_AGAIN_S)


async def _deliver(state: BuildState, services: Services, proxy: ProxyClient, pid: int) -> None:
    seen = 0
    async with contextlib.aclosing(proxy.follow(pid)) as lines:
        async for event in lines:
            seen += 1
            if seen > state.output_events_delivered:
                services.build_log(state, event.line, event.stream)
                state.output_events_delivered = seen


def _is_builder(command: str) -> bool:
    return command.rsplit("/", 1)[-1] == BUILDER_PROGRAM


async def release(state: BuildState, services: Services) -> Outcome:
    """Re-entry: asks again; the service answers a repeated cancel with already_cancelled."""
    cas = progress(state)
    if cas.status in TERMINAL_STATUSES:
        return SUCCEEDED
    try:
        outcome = await services.images(state).cancel(client_request_id=cas.request_id)
    except ApiError as error:
        return outcome_for(error)
    if outcome.build is not None:
        _observe(state, outcome.build)
    services.status(state, f"Image build {state.build_id or '-'}: {outcome.outcome}")
    return SUCCEEDED


async def explain(
    state: BuildState, services: Services, error: BaseException, *, diagnoses: bool
) -> BaseException:
    """A CAS build has no builder sandbox of its own to diagnose: its errors stand as they are
    (the service's record names the build)."""
    return error
