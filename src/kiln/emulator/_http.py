"""Helpers every route module shares: the state, the emulator's own URL, and auth."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from kiln.emulator._errors import EmulatorError, bad_request
from kiln.emulator._state import EmulatorState

_BEARER = "bearer "
_ORG_HEADER = "x-forwarded-organization-id"
_PROJECT_HEADER = "x-forwarded-project-id"
_UNAUTHENTICATED = "UNAUTHENTICATED"


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


def require_token(request: Request) -> None:
    """Any bearer token is accepted unless the emulator was started with an API key.

    The token is never echoed back, logged or stored.
    """
    header = request.headers.get("authorization", "")
    if not header.lower().startswith(_BEARER) or not header[len(_BEARER) :].strip():
        raise EmulatorError(
            401, _UNAUTHENTICATED, "missing bearer token: send 'Authorization: Bearer <token>'"
        )
    expected = state_of(request).config.api_key
    token = header[len(_BEARER) :].strip()
    if expected is not None and not hmac.compare_digest(token.encode(), expected.encode()):
        raise EmulatorError(
            401, _UNAUTHENTICATED, "token refused: this emulator was started with --api-key"
        )


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
    """Token check, plus the scope check when the route is the organization/project form."""
    require_token(request)
    params = request.path_params
    if "organization" in params:
        require_scope(request, params["organization"], params["project"])
