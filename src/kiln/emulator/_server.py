"""Running the emulator: uvicorn on a loopback socket, in a thread with its own event loop.

The thread keeps the emulator's CPU work (tar extraction, snapshot packing) off the caller's loop
and lets synchronous callers (the official client, the CLI) use it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from pathlib import Path
from types import TracebackType

import uvicorn

from kiln.emulator._app import build_app
from kiln.emulator._config import EmulatorConfig
from kiln.emulator._state import EmulatorState

START_TIMEOUT_S = 30.0
# Open streams are ended before shutdown (every process is killed first), so this is a backstop
# for a client that holds a connection open, not a normal wait.
GRACEFUL_SHUTDOWN_S = 5.0
STOP_TIMEOUT_S = GRACEFUL_SHUTDOWN_S + 5.0
_BACKLOG = 128


class _Server(uvicorn.Server):
    """uvicorn, with a thread-safe signal for "the socket is being served"."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


def _listen(host: str, port: int) -> socket.socket:
    candidates = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    # "localhost" may resolve to ::1 first; IPv4 keeps the URL a plain 127.0.0.1, which clients
    # recognise as local (docs/protocol.md#addresses: localhost and 127.0.0.1 get the namespaced
    # paths).
    candidates.sort(key=lambda info: info[0] != socket.AF_INET)
    family, kind, proto, _name, address = candidates[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(_BACKLOG)
    return sock


def _url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


class Emulator:
    """A running emulator: ``with Emulator(config) as emu:`` or ``async with``; ``emu.url``."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self._sock: socket.socket | None = None
        self._proxy_sock: socket.socket | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state: EmulatorState | None = None
        self._failure: BaseException | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """The base URL; still readable after stop, so a test can check nothing answers there."""
        if self._url is None:
            raise RuntimeError("the emulator was never started")
        return self._url

    @property
    def proxy_url(self) -> str | None:
        """The proxy's own address (``separate_proxy``), else None: the proxy shares ``url``."""
        return None if self._state is None else self._state.proxy_url

    @property
    def data_dir(self) -> Path:
        if self._state is None:
            raise RuntimeError("the emulator is not running; start it first")
        return self._state.data_dir

    def start(self) -> Emulator:
        if self._thread is not None:
            raise RuntimeError("this emulator is already running")
        sock = _listen(self.config.host, self.config.port)
        # The cloud's proxy is another host; here it is another port, known only via sandbox_url.
        proxy_sock = _listen(self.config.host, 0) if self.config.separate_proxy else None
        try:
            app, self._state = build_app(self.config)
        except BaseException:
            sock.close()
            if proxy_sock is not None:
                proxy_sock.close()
            raise
        if proxy_sock is not None:
            self._state.proxy_url = _url_of(proxy_sock)
            self._state.proxy_port = proxy_sock.getsockname()[1]
        self._sock, self._proxy_sock, self._url = sock, proxy_sock, _url_of(sock)
        self._server = _Server(
            uvicorn.Config(
                app,
                lifespan="on",
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=int(GRACEFUL_SHUTDOWN_S),
            )
        )
        self._thread = threading.Thread(target=self._run, name="kiln-emulator", daemon=True)
        self._thread.start()
        if not self._server.ready.wait(START_TIMEOUT_S) or self._failure is not None:
            self.stop()
            raise RuntimeError(f"the emulator did not start: {self._failure!r}")
        return self

    def _run(self) -> None:
        assert self._server is not None and self._sock is not None
        sockets = [self._sock] if self._proxy_sock is None else [self._sock, self._proxy_sock]
        try:
            asyncio.run(self._serve(self._server, sockets))
        except BaseException as failure:  # reported to the thread that called start()
            self._failure = failure
        finally:
            self._server.ready.set()

    async def _serve(self, server: _Server, sockets: list[socket.socket]) -> None:
        self._loop = asyncio.get_running_loop()
        await server.serve(sockets=sockets)

    def stop(self) -> None:
        """End every process (so open streams close), then shut uvicorn down and join its thread."""
        if self._thread is None:
            return
        if self._loop is not None and self._state is not None and not self._loop.is_closed():
            # The loop may close between the check and the call; then there is nothing to end.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._state.terminate_all, "emulator stopped")
        assert self._server is not None
        self._server.should_exit = True
        self._thread.join(STOP_TIMEOUT_S)
        for sock in (self._sock, self._proxy_sock):
            if sock is not None:
                sock.close()
        self._thread = None
        self._loop = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Emulator:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)


def start_emulator(config: EmulatorConfig | None = None) -> Emulator:
    """Start an emulator; the caller stops it with ``.stop()``."""
    return Emulator(config).start()
