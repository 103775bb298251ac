"""The Image Service client (``/images/v4``, the CAS path; docs/image-service.md).

Its wire is snake_case. An admission carries an ``Idempotency-Key``: the caller chooses it (and
persists it before the request), so that a retry, or a process resuming after a crash, lands
on the same build. The context upload goes to a pre-signed URL that may be another host's: it
is sent without the token or any scope header.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs
import httpx

from kiln.api._http import parse_json, raise_for_status, send
from kiln.api._models import structure
from kiln.api._settings import ApiSettings

IMAGES_PREFIX = "/images/v4"
IDEMPOTENCY_HEADER = "Idempotency-Key"
# Path segments of build ids are quoted whole; image names go unencoded, as the official client
# sends them (a '/' in a name included).
_NAME_SAFE = "/:@-._~"
# The pre-signed upload must not carry what authenticates kiln to Tensorlake.
_CREDENTIAL_HEADERS = ("authorization", "x-forwarded-organization-id", "x-forwarded-project-id")
_UPLOAD_CHUNK_BYTES = 1 << 20
BUILD_NOT_FOUND = 404
# A build's status values (the wire's words); the last three end it.
STATUS_PENDING = "pending"
STATUS_RUNNING = "running"
STATUS_SUCCEEDED = "succeeded"
STATUS_FAILED = "failed"
STATUS_CANCELLED = "cancelled"
TERMINAL_STATUSES = frozenset({STATUS_SUCCEEDED, STATUS_FAILED, STATUS_CANCELLED})


@attrs.frozen
class CasImage:
    """An image of the Image Service."""

    id: str
    name: str
    snapshot_id: str
    physical_size_bytes: int
    logical_size_bytes: int
    created_at: str
    updated_at: str


@attrs.frozen
class ContextUpload:
    """Where a Dockerfile build's context goes (a pre-signed URL) and its size cap."""

    url: str
    max_bytes: int


@attrs.frozen
class CasBuild:
    """A build record; ``result`` once it succeeded, ``context_upload`` while it takes one."""

    build_id: str
    status: str
    phase: str | None = None
    kind: str | None = None
    name: str | None = None
    attempt_no: int = 0
    builder_sandbox_id: str | None = None
    error: str | None = None
    result: CasImage | None = None
    context_upload: ContextUpload | None = None
    raw: dict[str, Any] = attrs.field(factory=dict, repr=False, eq=False)

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL_STATUSES


@attrs.frozen
class CancelOutcome:
    """``cancelled``, ``already_cancelled``, ``already_completed``, ``already_failed`` or
    ``not_admitted`` (nothing was admitted under the request id)."""

    outcome: str
    build: CasBuild | None = None


class ImageServiceClient:
    """Names, builds and their contexts on the Image Service."""

    def __init__(self, settings: ApiSettings, http: httpx.AsyncClient) -> None:
        self._settings = settings
        self._http = http

    def _url(self, path: str) -> str:
        return f"{self._settings.api_url}{IMAGES_PREFIX}{path}"

    async def _json(self, request: httpx.Request) -> Any:
        response = await send(self._http, request)
        await raise_for_status(response)
        return parse_json(response)

    async def image_by_name(self, name: str) -> CasImage | None:
        """The image registered under ``name``, or None when it is no CAS image (404)."""
        request = self._http.build_request(
            "GET", self._url(f"/images/name/{quote(name, _NAME_SAFE)}")
        )
        response = await send(self._http, request)
        if response.status_code == httpx.codes.NOT_FOUND:
            return None
        await raise_for_status(response)
        return structure(parse_json(response), CasImage, f"image lookup for {name!r}")

    async def create_build(self, body: Mapping[str, Any], request_id: str) -> CasBuild:
        """Admit a build under ``request_id``; the same id again answers the same build."""
        request = self._http.build_request(
            "POST", self._url("/builds"), json=dict(body), headers={IDEMPOTENCY_HEADER: request_id}
        )
        return structure(await self._json(request), CasBuild, "build admission")

    async def get_build(self, build_id: str) -> CasBuild:
        """The build's record; a ServerError with status 404 when it is unknown or retired."""
        request = self._http.build_request("GET", self._url(f"/builds/{quote(build_id, safe='')}"))
        return structure(await self._json(request), CasBuild, f"build {build_id}")

    async def upload_context(self, upload: ContextUpload, archive: Path) -> int:
        """PUT the context tar to its pre-signed URL, streamed, with its length and no token."""
        size = archive.stat().st_size
        request = self._http.build_request(
            "PUT",
            upload.url,
            content=_chunks(archive),
            headers={"Content-Length": str(size)},
        )
        for header in _CREDENTIAL_HEADERS:
            request.headers.pop(header, None)
        await raise_for_status(await send(self._http, request))
        return size

    async def seal(self, build_id: str, digest: str) -> CasBuild:
        """Seal the uploaded context with its SHA-256 (hex); the build starts."""
        path = f"/builds/{quote(build_id, safe='')}/context/seal"
        request = self._http.build_request("POST", self._url(path), json={"digest": digest})
        return structure(await self._json(request), CasBuild, f"seal of {build_id}")

    async def cancel(
        self, *, build_id: str | None = None, client_request_id: str | None = None
    ) -> CancelOutcome:
        """Cancel by build id, or by the admission's request id when its answer was lost."""
        if (build_id is None) == (client_request_id is None):
            raise ValueError("pass exactly one of build_id or client_request_id")
        selector = {"build_id": build_id} if build_id else {"client_request_id": client_request_id}
        request = self._http.build_request("POST", self._url("/builds/cancel"), json=selector)
        return structure(await self._json(request), CancelOutcome, "cancel")


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, _UPLOAD_CHUNK_BYTES):
            yield chunk
