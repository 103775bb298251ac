"""Helpers every route module shares: the state, the emulator's own URL, and auth."""

from __future__ import annotations

import asyncio
import hmac
from typing import IO

from starlette.requests import Request

from kiln.emulator._errors import EmulatorError, bad_request
from kiln.emulator._state import EmulatorState

_BEARER = "bearer "
_ORG_HEADER = "x-forwarded-organization-id"
_PROJECT_HEADER = "x-forwarded-project-id"
_UNAUTHENTICATED = "UNAUTHENTICATED"
_FORBIDDEN = "FORBIDDEN"


def state_of(request: Request) -> EmulatorState:
    state: EmulatorState = request.app.state.emulator
    return state


def public_url(request: Request) -> str:
    """The emulator's base URL as the socket it answered on sees it (not the Host header, which
    names a sandbox on proxy requests)."""
    server = request.scope.get("server")
    if not server:
        return str(request.base_url).rstrip("/")
    host, port = server[0], server[1]
    host = f"[{host}]" if ":" in host else host
    return f"{request.url.scheme}://{host}:{port}"


def proxy_url(request: Request) -> str:
    """Where sandboxes are reached: the proxy's own port when it has one, else this one."""
    return state_of(request).proxy_url or public_url(request)


# Big enough that a worker-thread hop per batch costs nothing next to the disk write.
WRITE_BATCH_BYTES = 4 * 1024 * 1024


async def copy_body(request: Request, handle: IO[bytes]) -> int:
    """Stream the request body into ``handle`` in batches; a large upload never sits in memory."""
    size, pending = 0, bytearray()
    async for chunk in request.stream():
        size += len(chunk)
        pending += chunk
        if len(pending) >= WRITE_BATCH_BYTES:
            await asyncio.to_thread(handle.write, pending)
            pending = bytearray()
    await asyncio.to_thread(handle.write, pending)
    return size


def require_length(request: Request) -> None:
    """``require_content_length``: a chunked PUT is refused as proxies in front of stores do."""
    if state_of(request).config.require_content_length and "content-length" not in request.headers:
        raise EmulatorError(
            411, "LENGTH_REQUIRED", "Length Required: this PUT must carry a Content-Length header"
        )


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith(_BEARER):
        return None
    return header[len(_BEARER) :].strip() or None


def _same(token: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(token.encode(), expected.encode())


def is_pat(request: Request, token: str) -> bool:
    """Platform auth tells the kinds apart; the emulator knows its PAT by configuration."""
    return _same(token, state_of(request).config.pat)


def require_token(request: Request) -> str:
    """Any bearer token is accepted unless the emulator was started with an API key (then that
    key, or the configured PAT). With platform auth, a PAT must name its scope on every route.

    The token is never echoed back, logged or stored.
    """
    token = bearer(request)
    if token is None:
        raise EmulatorError(
            401, _UNAUTHENTICATED, "missing bearer token: send 'Authorization: Bearer <token>'"
        )
    config = state_of(request).config
    if config.api_key is not None and not (_same(token, config.api_key) or is_pat(request, token)):
        raise EmulatorError(
            401, _UNAUTHENTICATED, "token refused: this emulator was started with --api-key"
        )
    if config.platform_auth and is_pat(request, token):
        missing = [h for h in (_ORG_HEADER, _PROJECT_HEADER) if h not in request.headers]
        if missing:
            raise EmulatorError(
                403,
                _FORBIDDEN,
                f"a personal access token must name its scope: missing {', '.join(missing)}",
            )
    return token


def require_scope(request: Request, organization: str, project: str) -> None:
    """PAT routes: both forwarded scope headers must be present and match the path."""
    for header, expected, label in (
        (_ORG_HEADER, organization, "organization"),
        (_PROJECT_HEADER, project, "project"),
    ):
        sent = request.headers.get(header)
        if sent is None:
            raise bad_request(
                f"missing header {header} (PAT routes must name the {label} they act for)",
                code="MISSING_SCOPE",
            )
        if sent != expected:
            raise EmulatorError(
                403,
                "SCOPE_MISMATCH",
                f"{label} {expected!r} in the path does not match {header}: {sent!r}",
            )


def authorize(request: Request) -> None:
    """Token check, plus the scope check when the route is the organization/project form.

    With platform auth, as the platform checks it: an API key belongs to one project and may use
    only the token-scoped routes; a PAT acts for a user across projects and must use the
    organization/project routes.
    """
    token = require_token(request)
    params = request.path_params
    scoped_route = "organization" in params
    if state_of(request).config.platform_auth:
        pat = is_pat(request, token)
        if scoped_route and not pat:
            raise EmulatorError(
                403,
                _FORBIDDEN,
                "API keys are scoped to their project: use the /platform/v1/... routes without "
                "/organizations/{org}/projects/{project}",
            )
        if pat and not scoped_route:
            raise EmulatorError(
                403,
                _FORBIDDEN,
                "a personal access token needs the /platform/v1/organizations/{org}/projects/"
                "{project}/... routes and the X-Forwarded-Organization-Id/Project-Id headers",
            )
    if scoped_route:
        require_scope(request, params["organization"], params["project"])
