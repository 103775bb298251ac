"""A small synchronous client for the emulator's ``/_emulator/`` surface.

Synchronous on purpose: the emulator serves from its own thread and event loop, so the calls are
short loopback round trips that work the same from a plain test, an async test or a hypothesis
example, without the caller owning an event loop.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from kiln.errors import UsageError

ADMIN = "/_emulator"
TERMINATED = "terminated"
# Admin calls are loopback round trips that never wait on a build; a slow one means a hung
# emulator, which should fail the test rather than stall it.
ADMIN_TIMEOUT_S = 10.0
HTTP_CREATED = 201
HTTP_OK = 200


class EmulatorClient:
    """Faults, builder behaviour and introspection of one running emulator at ``url``."""

    def __init__(self, url: str, *, token: str | None = None) -> None:
        """``token``: the emulator's ``--api-key``, which then guards ``/_emulator/`` too."""
        self.url = url
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        self._http = httpx.Client(base_url=url, timeout=ADMIN_TIMEOUT_S, headers=headers)

    def add_fault(
        self,
        action: dict[str, Any],
        *,
        method: str | None = None,
        path: str | None = None,
        times: int | None = 1,
        after: int = 0,
    ) -> dict[str, Any]:
        """Make matching requests misbehave; returns the rule as the emulator normalised it.

        ``action`` is one of ``{"status": 503}``, ``{"delay_ms": 200}``, ``{"reset": True}``,
        ``{"cut_stream_after": 2}``; ``path`` is a regex searched in the request path; the first
        ``after`` matches pass, then ``times`` matches (None: all) get the action.
        """
        rule: dict[str, Any] = {
            "match": {"method": method, "path": path},
            "action": action,
            "after": after,
        }
        if times is not None:
            rule["times"] = times
        added: dict[str, Any] = _json(self._http.post(f"{ADMIN}/faults", json=rule), HTTP_CREATED)
        return added

    def faults(self) -> list[dict[str, Any]]:
        """Every rule, with how many requests it matched (``seen``) and acted on (``fired``)."""
        rules: list[dict[str, Any]] = _json(self._http.get(f"{ADMIN}/faults"))
        return rules

    def clear_faults(self) -> None:
        _json(self._http.delete(f"{ADMIN}/faults"))

    def set_builder(self, **behaviour: Any) -> dict[str, Any]:
        """Replace the builder stand-in's behaviour (``exit_code``, ``oom_kill``, ``enospc``,
        ``signal``, ``duration_ms``, ``log_lines``, ``line_pace_ms``) until the next reset."""
        applied: dict[str, Any] = _json(self._http.post(f"{ADMIN}/builder", json=behaviour))
        return applied

    def requests(self) -> list[dict[str, Any]]:
        """The request log: method, path, redacted query, status (None: no complete answer)."""
        entries: list[dict[str, Any]] = _json(self._http.get(f"{ADMIN}/requests"))
        return entries

    def sandboxes(self) -> list[dict[str, Any]]:
        """Every sandbox created since the last reset, with its status."""
        return self._listing("sandboxes")

    def terminate_sandbox(self, sandbox_id: str, reason: str | None = None) -> dict[str, Any]:
        """End a sandbox now, whatever its status: one that dies while starting, or is lost."""
        body = {} if reason is None else {"reason": reason}
        url = f"{ADMIN}/sandboxes/{sandbox_id}/terminate"
        ended: dict[str, Any] = _json(self._http.post(url, json=body))
        return ended

    def live_sandboxes(self) -> list[dict[str, Any]]:
        """The sandboxes not terminated: after a finished build, a leak."""
        return [s for s in self.sandboxes() if s["status"] != TERMINATED]

    def processes(self) -> list[dict[str, Any]]:
        """Every process started in any sandbox, with argv, user and exit status."""
        return self._listing("processes")

    def templates(self) -> list[dict[str, Any]]:
        """The templates registered by completed builds."""
        return self._listing("templates")

    def image_builds(self) -> list[dict[str, Any]]:
        """The Image Service's builds (the CAS path) since the last reset: status, kind, parents,
        builder sandbox."""
        builds: list[dict[str, Any]] = _json(self._http.get(f"{ADMIN}/image-builds"))["builds"]
        return builds

    def blob(self, uri: str) -> bytes:
        """The stored object at ``uri`` (``s3://kiln-emulator/<key>``), e.g. the snapshot a
        template's ``snapshotUri`` names, to look at what a build registered."""
        return _checked(self._http.get(f"{ADMIN}/blobs", params={"uri": uri})).content

    def delete_template(self, name: str) -> None:
        """Delete the template registered under ``name``, as it may be deleted on the platform."""
        _json(self._http.delete(f"{ADMIN}/templates/{quote(name, safe='')}"))

    def reset(self) -> None:
        """Forget sandboxes, builds, templates, faults, the request log and builder behaviour."""
        _json(self._http.post(f"{ADMIN}/reset"))

    def close(self) -> None:
        self._http.close()

    def _listing(self, name: str) -> list[dict[str, Any]]:
        """``GET /_emulator/<name>``, whose answer is ``{"<name>": [...]}``."""
        items: list[dict[str, Any]] = _json(self._http.get(f"{ADMIN}/{name}"))[name]
        return items

    def __enter__(self) -> EmulatorClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _json(response: httpx.Response, expected: int = HTTP_OK) -> Any:
    return _checked(response, expected).json()


def _checked(response: httpx.Response, expected: int = HTTP_OK) -> httpx.Response:
    if response.status_code != expected:
        raise UsageError(
            f"emulator refused {response.request.method} {response.request.url.path}: "
            f"{response.status_code} {response.text}",
            hint="check the arguments against the emulator's /_emulator/ documentation",
        )
    return response
