"""The emulator as one ASGI app: Tensorlake's APIs (platform, Image Service, lifecycle, proxy) plus
``/_emulator/``, behind the network middleware (faults, request log, latency, bandwidth)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.datastructures import Headers, QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

from kiln.emulator import _admin, _images, _lifecycle, _platform, _proxy
from kiln.emulator._blobs import BLOB_ROUTE, SIGNATURE_PARAM
from kiln.emulator._config import EmulatorConfig
from kiln.emulator._errors import EXCEPTION_HANDLERS, error_response
from kiln.emulator._state import EmulatorState
from kiln.emulator.middleware import wrap_app
from kiln.errors import ConfigError

# Expiry is also checked on every access; the sweep only makes idle sandboxes end on time even when
# nobody is looking, so the leak check sees them terminated.
REAP_INTERVAL_S = 0.1
_TEMP_PREFIX = "kiln-emulator-"
ADMIN_PREFIX = "/_emulator/"
PROXY_PREFIX = _proxy.API + "/"


async def _reap_forever(state: EmulatorState) -> None:
    while True:
        state.reap()
        await asyncio.sleep(REAP_INTERVAL_S)


class _PortRouter:
    """With the proxy on its own port, each port serves only its own API (``/_emulator/`` both).

    A client that sends proxy calls to the platform's address, or platform calls to a sandbox's,
    gets the 404 a real load balancer in front of the other service would give.
    """

    def __init__(self, app: ASGIApp, state: EmulatorState) -> None:
        self._app = app
        self._state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        port = self._state.proxy_port
        if scope["type"] != "http" or port is None or scope["path"].startswith(ADMIN_PREFIX):
            await self._app(scope, receive, send)
            return
        on_proxy_port = (scope.get("server") or ("", None))[1] == port
        if on_proxy_port != scope["path"].startswith(PROXY_PREFIX):
            where = "a sandbox's proxy" if on_proxy_port else "the platform API"
            response = error_response(
                404, "NOT_FOUND", f"{scope['method']} {scope['path']}: no such route on {where}"
            )
            await response(scope, receive, send)
            return
        await self._app(scope, receive, send)


class _AdminGuard:
    """With an API key, ``/_emulator/*`` (faults, reset, introspection, blobs) needs it too.

    A blob URL the emulator signed (``sig``) is its own permission, as a pre-signed URL is.
    """

    def __init__(self, app: ASGIApp, state: EmulatorState) -> None:
        self._app = app
        self._state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = self._state.config.api_key
        path = scope.get("path", "")
        if scope["type"] != "http" or key is None or not path.startswith(ADMIN_PREFIX):
            await self._app(scope, receive, send)
            return
        if self._token_ok(scope, key) or self._signed_blob(scope, path):
            await self._app(scope, receive, send)
            return
        response = error_response(
            401,
            "UNAUTHENTICATED",
            f"{path} needs the emulator's --api-key as a bearer token (or a signed blob URL)",
        )
        await response(scope, receive, send)

    @staticmethod
    def _token_ok(scope: Scope, key: str) -> bool:
        header = Headers(scope=scope).get("authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), key.encode()
        )

    def _signed_blob(self, scope: Scope, path: str) -> bool:
        if not path.startswith(BLOB_ROUTE) or scope["method"] not in ("GET", "PUT"):
            return False
        given = QueryParams(scope["query_string"]).get(SIGNATURE_PARAM, "")
        return self._state.blobs.signature_valid(path.removeprefix(BLOB_ROUTE), given)


def _data_dir(config: EmulatorConfig) -> tuple[Path, bool]:
    """The data directory (a fresh temporary one when none is configured), checked usable."""
    if config.data_dir is None:
        return Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX)), True
    data_dir = config.data_dir
    if data_dir.exists() and not data_dir.is_dir():
        raise ConfigError(
            f"--data-dir {data_dir} is not a directory",
            hint="name a directory (it is created when missing), or omit it for a temporary one",
        )
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as problem:
        raise ConfigError(
            f"cannot create --data-dir {data_dir}: {problem.strerror or problem}",
            hint="name a directory you can write to",
        ) from None
    return data_dir, False


def build_app(config: EmulatorConfig) -> tuple[ASGIApp, EmulatorState]:
    """The wrapped app and the state behind it (the server needs both)."""
    data_dir, owns_data_dir = _data_dir(config)
    state = EmulatorState(config, data_dir)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        reaper = asyncio.create_task(_reap_forever(state))
        try:
            yield
        finally:
            reaper.cancel()
            state.terminate_all("emulator stopped")
            shutil.rmtree(state.sandbox_root, ignore_errors=True)
            if owns_data_dir:
                shutil.rmtree(data_dir, ignore_errors=True)

    app = Starlette(
        routes=[
            *_platform.routes(),
            *_images.routes(),
            *_lifecycle.routes(),
            *_proxy.routes(),
            *_admin.routes(),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.emulator = state
    wrapped = wrap_app(
        _PortRouter(app, state),
        faults=state.faults,
        log=state.requests,
        latency_ms=config.latency_ms,
        bandwidth_mbps=config.bandwidth_mbps,
    )
    return _AdminGuard(wrapped, state), state


def create_app(config: EmulatorConfig) -> ASGIApp:
    """The emulator as an ASGI app, for uvicorn or ``httpx.ASGITransport``.

    One app has one address, so the proxy shares it: ``separate_proxy`` needs :class:`Emulator`.
    """
    if config.separate_proxy:
        raise ConfigError(
            "separate_proxy needs two listening ports; an in-process app has one address",
            hint="run it with kiln.emulator.Emulator, or pass separate_proxy=False",
        )
    return build_app(config)[0]
