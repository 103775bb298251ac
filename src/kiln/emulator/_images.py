"""The Image Service under ``/images/v4`` (the CAS path), its context upload URL, and its
introspection under ``/_emulator/``.

Auth is the platform's: a bearer API key, or a PAT with the ``X-Forwarded-Organization-Id`` and
``X-Forwarded-Project-Id`` headers (the routes are the same for both). Refusals are the service's
JSON, ``{"code", "message", ...details}``. The context upload URL is a pre-signed URL like an
object store's: no token, its ``sig`` is the permission (and is redacted in the request log).
It lives on the platform's address, outside ``/_emulator/``, so the upload is logged, faulted
and paced like every other request a client makes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from kiln.emulator._errors import EmulatorError
from kiln.emulator._http import public_url, require_length, require_token, state_of
from kiln.emulator._image_models import (
    BuildRequest,
    CancelRequest,
    ImageServiceError,
    SealRequest,
    invalid,
)
from kiln.emulator._image_service import ImageBuild, ImageService
from kiln.emulator._validate import json_object

IMAGES = "/images/v4"
UPLOAD_ROUTE = "/image-context-uploads/"
ADMIN = "/_emulator"
IDEMPOTENCY_HEADER = "idempotency-key"
SIGNATURE_PARAM = "sig"
# Longer keys are not a client's request ids; the official client sends 32 hex digits.
MAX_IDEMPOTENCY_KEY_CHARS = 255

Endpoint = Callable[[Request], Awaitable[Response]]


def _service(request: Request) -> ImageService:
    return state_of(request).images


def _answers_as_the_service(handler: Endpoint) -> Endpoint:
    """Every refusal in the service's own error shape, the shared auth and body checks' too."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except ImageServiceError as refused:
            return JSONResponse(refused.body(), status_code=refused.status)
        except EmulatorError as refused:
            body = {"code": refused.code.lower(), "message": refused.message}
            return JSONResponse(body, status_code=refused.status)

    return endpoint


def _upload_url(request: Request, build: ImageBuild) -> str:
    signature = state_of(request).blobs.signature(build.context_key)
    query = urlencode({SIGNATURE_PARAM: signature})
    return f"{public_url(request)}{UPLOAD_ROUTE}{build.id}?{query}"


def _build_answer(request: Request, build: ImageBuild) -> JSONResponse:
    upload = _service(request).upload_target(build, _upload_url(request, build))
    return JSONResponse(build.wire().to_wire(upload))


async def image_by_name(request: Request) -> Response:
    require_token(request)
    image = _service(request).image_by_name(request.path_params["name"])
    return JSONResponse(image.to_wire())


async def image_by_id(request: Request) -> Response:
    require_token(request)
    image = _service(request).image_by_id(request.path_params["image_id"])
    return JSONResponse(image.to_wire())


def _request_id(request: Request) -> str:
    key = request.headers.get(IDEMPOTENCY_HEADER, "").strip()
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_CHARS:
        raise invalid(
            f"an admission needs an Idempotency-Key header of 1 to {MAX_IDEMPOTENCY_KEY_CHARS} "
            "characters (a retry sends the same key and gets the same build)"
        )
    return key


async def create_build(request: Request) -> Response:
    require_token(request)
    request_id = _request_id(request)
    build_request = BuildRequest.parse(await json_object(request))
    build, _replayed = _service(request).admit(request_id, build_request)
    return _build_answer(request, build)


async def get_build(request: Request) -> Response:
    require_token(request)
    return _build_answer(request, _service(request).get(request.path_params["build_id"]))


async def seal_context(request: Request) -> Response:
    require_token(request)
    service = _service(request)
    build = service.get(request.path_params["build_id"])
    service.seal(build, SealRequest.parse(await json_object(request)).digest)
    return _build_answer(request, build)


async def cancel_build(request: Request) -> Response:
    require_token(request)
    cancel = CancelRequest.parse(await json_object(request))
    outcome, build = _service(request).cancel(cancel)
    wire = None if build is None else build.wire().to_wire()
    return JSONResponse({"outcome": outcome, "build": wire})


def _declared_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    if not raw.isdigit():
        raise invalid(f"Content-Length must be a number of bytes, got {raw!r}")
    return int(raw)


async def upload_context(request: Request) -> Response:
    """The pre-signed PUT of the context: a plain tar, no token, at most ``max_bytes``."""
    service = _service(request)
    build = service.get(request.path_params["build_id"])
    given = request.query_params.get(SIGNATURE_PARAM, "")
    if not state_of(request).blobs.signature_valid(build.context_key, given):
        raise ImageServiceError(
            403, "signature_invalid", "this upload URL is not signed for this build's context"
        )
    require_length(request)
    size = await service.receive_context(build, request.stream(), _declared_length(request))
    return JSONResponse({"build_id": build.id, "size": size})


async def list_builds(request: Request) -> Response:
    builds = _service(request).builds.values()
    return JSONResponse({"builds": [build.describe() for build in builds]})


def routes() -> list[BaseRoute]:
    def route(path: str, handler: Endpoint, method: str) -> Route:
        return Route(path, _answers_as_the_service(handler), methods=[method])

    return [
        route(IMAGES + "/images/name/{name:path}", image_by_name, "GET"),
        route(IMAGES + "/images/{image_id}", image_by_id, "GET"),
        route(IMAGES + "/builds", create_build, "POST"),
        route(IMAGES + "/builds/cancel", cancel_build, "POST"),
        route(IMAGES + "/builds/{build_id}", get_build, "GET"),
        route(IMAGES + "/builds/{build_id}/context/seal", seal_context, "POST"),
        route(UPLOAD_ROUTE + "{build_id}", upload_context, "PUT"),
        Route(ADMIN + "/image-builds", list_builds, methods=["GET"]),
    ]
