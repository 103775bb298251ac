"""Lifecycle API: create, get and delete sandboxes (namespaced for localhost, and plain)."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from kiln.emulator._errors import EmulatorError, not_found
from kiln.emulator._http import proxy_url, require_token, state_of
from kiln.emulator._sandbox import Sandbox
from kiln.emulator._state import SandboxRequest
from kiln.emulator._validate import field, json_object, non_empty, optional, positive

DEFAULT_NAMESPACE = "default"
# What the platform gives a sandbox that asks for nothing; the official client always asks.
DEFAULT_CPUS = 1.0
DEFAULT_MEMORY_MB = 1024
DEFAULT_DISK_MB = 10240
DEFAULT_TIMEOUT_SECS = 300
NAMESPACED = "/v1/namespaces/{namespace}/sandboxes"
PLAIN = "/sandboxes"


def _namespace(request: Request) -> str:
    namespace: str = request.path_params.get("namespace", DEFAULT_NAMESPACE)
    return namespace


def _sandbox(request: Request) -> Sandbox:
    sandbox_id = request.path_params["sandbox_id"]
    sandbox = state_of(request).sandbox(sandbox_id)
    if sandbox is None or sandbox.namespace != _namespace(request):
        raise not_found(
            f"sandbox {sandbox_id!r} not found in namespace {_namespace(request)!r}",
            code="SANDBOX_NOT_FOUND",
        )
    return sandbox


async def create(request: Request) -> JSONResponse:
    require_token(request)
    body = await json_object(request)
    resources = optional(body, "resources", dict, {})
    spec = SandboxRequest(
        namespace=_namespace(request),
        image=non_empty(field(body, "image", str), "image"),
        cpus=positive(
            optional(resources, "cpus", float, DEFAULT_CPUS, where="resources."), "resources.cpus"
        ),
        memory_mb=positive(
            optional(resources, "memory_mb", int, DEFAULT_MEMORY_MB, where="resources."),
            "resources.memory_mb",
        ),
        disk_mb=positive(
            optional(resources, "disk_mb", int, DEFAULT_DISK_MB, where="resources."),
            "resources.disk_mb",
        ),
        timeout_secs=positive(
            optional(body, "timeout_secs", int, DEFAULT_TIMEOUT_SECS), "timeout_secs"
        ),
    )
    sandbox = state_of(request).create_sandbox(spec)
    return JSONResponse(sandbox.describe(proxy_url(request)))


async def get(request: Request) -> JSONResponse:
    require_token(request)
    sandbox = _sandbox(request)
    if time.monotonic() < sandbox.errors_until:
        # What the platform answers while a new sandbox's route is not yet programmed.
        raise EmulatorError(
            502, "PROXY_ERROR", "PROXY_ERROR: Failed to proxy request: sandbox is starting"
        )
    return JSONResponse(sandbox.describe(proxy_url(request)))


async def delete(request: Request) -> JSONResponse:
    require_token(request)
    sandbox = _sandbox(request)
    sandbox.terminate("deleted")
    return JSONResponse(sandbox.describe(proxy_url(request)))


def routes() -> list[BaseRoute]:
    table: list[BaseRoute] = []
    for prefix in (NAMESPACED, PLAIN):
        table += [
            Route(prefix, create, methods=["POST"]),
            Route(prefix + "/{sandbox_id}", get, methods=["GET"]),
            Route(prefix + "/{sandbox_id}", delete, methods=["DELETE"]),
        ]
    return table
