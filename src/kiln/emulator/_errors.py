"""Errors as the emulator answers them: JSON ``{"error", "code"}``, never a traceback."""

from __future__ import annotations

import structlog
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

_log = structlog.get_logger("kiln.emulator")

INTERNAL_ERROR_STATUS = 500


class EmulatorError(Exception):
    """A request the emulator refuses, with the status and body a client should see."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def bad_request(message: str, code: str = "INVALID_REQUEST") -> EmulatorError:
    return EmulatorError(400, code, message)


def not_found(message: str, code: str = "NOT_FOUND") -> EmulatorError:
    return EmulatorError(404, code, message)


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status)


async def _emulator_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EmulatorError)
    return error_response(exc.status, exc.code, exc.message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    # Routing misses land here; naming method and path tells a client author what they got wrong.
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return error_response(exc.status_code, f"HTTP_{exc.status_code}", message)


async def _unexpected(request: Request, exc: Exception) -> Response:
    _log.exception("emulator_internal_error", method=request.method, path=request.url.path)
    message = f"internal emulator error ({type(exc).__name__}); see the emulator's log"
    return error_response(INTERNAL_ERROR_STATUS, "INTERNAL", message)


async def _client_gone(request: Request, _exc: Exception) -> Response:
    # A client that drops its request mid-body (a cancelled upload) is not an emulator fault:
    # one line, no traceback. Nobody is left to read the answer.
    _log.info("client_disconnected", method=request.method, path=request.url.path)
    return error_response(400, "CLIENT_DISCONNECTED", "the client went away mid-request")


EXCEPTION_HANDLERS = {
    EmulatorError: _emulator_error,
    ClientDisconnect: _client_gone,
    HTTPException: _http_error,
    Exception: _unexpected,
}
