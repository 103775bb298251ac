"""The sandbox lifecycle client: create, get, delete (docs/protocol.md#create-sandbox)."""

from __future__ import annotations

from urllib.parse import quote

import httpx

from kiln.api._http import body_excerpt, error_for_status, parse_json, raise_for_status, send
from kiln.api._models import SandboxCreated, SandboxInfo, structure
from kiln.api._settings import ApiSettings
from kiln.errors import ApiError, ResponseError

# A create that outlives the gateway's own deadline answers 504 but may still carry the new
# sandbox in its body; reading it lets the caller clean that sandbox up instead of leaking it.
GATEWAY_TIMEOUT = 504
# A sandbox the lifecycle service no longer knows, or reports as ended, is gone: deleting it
# again has nothing left to do.
NOT_FOUND = 404
TERMINATED = "terminated"


class LifecycleClient:
    """Builder sandboxes on the lifecycle service."""

    def __init__(self, settings: ApiSettings, http: httpx.AsyncClient) -> None:
        self._http = http
        self._base = f"{settings.lifecycle_base_url}{settings.lifecycle_path}"

    def _url(self, sandbox_id: str | None = None) -> str:
        return self._base if sandbox_id is None else f"{self._base}/{quote(sandbox_id, safe='')}"

    async def create_sandbox(
        self,
        *,
        image: str,
        cpus: float,
        memory_mb: int,
        disk_mb: int,
        timeout_secs: int,
        name: str | None = None,
    ) -> SandboxCreated:
        """Ask for a builder sandbox; the answer's status is whatever the service says.

        ``name`` is the create body's optional name (docs/protocol.md#create-sandbox), omitted when
        not given."""
        body: dict[str, object] = {
            "image": image,
            "resources": {"cpus": cpus, "memory_mb": memory_mb, "disk_mb": disk_mb},
            "timeout_secs": timeout_secs,
        }
        if name is not None:
            body["name"] = name
        request = self._http.build_request("POST", self._url(), json=body)
        response = await send(self._http, request)
        if response.status_code == GATEWAY_TIMEOUT:
            return _created_despite_timeout(response)
        await raise_for_status(response)
        return structure(parse_json(response), SandboxCreated, "create sandbox response")

    async def get_sandbox(self, sandbox_id: str) -> SandboxInfo:
        request = self._http.build_request("GET", self._url(sandbox_id))
        response = await send(self._http, request)
        await raise_for_status(response)
        data = parse_json(response)
        if isinstance(data, dict) and "sandbox_id" not in data and "id" in data:
            data = {**data, "sandbox_id": data["id"]}  # `id` is the field's older name
        return structure(data, SandboxInfo, "get sandbox response")

    async def delete_sandbox(self, sandbox_id: str) -> None:
        request = self._http.build_request("DELETE", self._url(sandbox_id))
        await raise_for_status(await send(self._http, request))

    async def ensure_deleted(self, sandbox_id: str) -> None:
        """Delete the sandbox; one the service does not know (404) is already deleted, which is
        what a repeated delete (a resumed cleanup, the reaper after it) finds. Any other error
        is raised: the sandbox may still exist."""
        try:
            await self.delete_sandbox(sandbox_id)
        except ApiError as error:
            if error.status != NOT_FOUND:
                raise

    async def is_gone(self, sandbox_id: str) -> bool:
        """Whether the service says the sandbox no longer exists: unknown (404) or terminated.
        Any other error is raised: the caller decides what an unclear answer means."""
        try:
            info = await self.get_sandbox(sandbox_id)
        except ApiError as error:
            if error.status == NOT_FOUND:
                return True
            raise
        return info.status == TERMINATED


def _created_despite_timeout(response: httpx.Response) -> SandboxCreated:
    try:
        return structure(parse_json(response), SandboxCreated, "create sandbox response")
    except ResponseError:
        raise error_for_status(
            response.request, response.status_code, body_excerpt(response)
        ) from None
