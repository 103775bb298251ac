"""The platform API client: template lookup, prepare, complete, introspect
(docs/protocol.md#template-lookup)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from kiln.api._http import (
    body_excerpt,
    describe,
    error_for_status,
    parse_json,
    raise_for_status,
    send,
)
from kiln.api._models import IntrospectScope, PreparedBuild, Template, structure
from kiln.api._settings import ApiSettings
from kiln.errors import AuthenticationError, ResponseError

# RFC 3986 unreserved characters; everything else in a template name is percent-encoded
# (docs/protocol.md#template-lookup).
UNRESERVED = "-._~"
INTROSPECT_PATH = "/platform/v1/keys/introspect"
TEMPLATE_REQUIRED = (("id", "an id"), ("name", "a name"), ("snapshotId", "a snapshot id"))


class PlatformClient:
    """Templates and template builds on the platform API."""

    def __init__(self, settings: ApiSettings, http: httpx.AsyncClient) -> None:
        self._settings = settings
        self._http = http

    def _url(self, path: str) -> str:
        return f"{self._settings.api_url}{self._settings.platform_prefix}{path}"

    async def get_template(self, name: str) -> Template | None:
        """The template registered under `name`, or None (404) so the name becomes a registry
        pull."""
        url = self._url(f"/sandbox-templates/by-name/{quote(name, safe=UNRESERVED)}")
        request = self._http.build_request("GET", url, headers={"Accept": "application/json"})
        response = await send(self._http, request)
        if response.status_code == httpx.codes.NOT_FOUND:
            return None
        await raise_for_status(response)
        data = parse_json(response)
        _require_template_fields(data, name)
        return structure(data, Template, f"template lookup for {name!r}")

    async def prepare(self, body: Mapping[str, Any]) -> PreparedBuild:
        """Register the build and get the builder spec back; `raw` keeps the whole response."""
        request = self._http.build_request("POST", self._url("/sandbox-template-builds"), json=body)
        data = await self._checked_json(request, "failed to prepare sandbox image build")
        return structure(data, PreparedBuild, "prepare response")

    async def complete(self, build_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Register the built snapshot; the answer is the registered template, passed on as is."""
        path = f"/sandbox-template-builds/{quote(build_id, safe=UNRESERVED)}/complete"
        request = self._http.build_request("POST", self._url(path), json=body)
        data = await self._checked_json(request, "failed to complete sandbox image build")
        if not isinstance(data, dict):
            raise ResponseError(f"{describe(request)}: expected a JSON object")
        return data

    async def introspect(self) -> tuple[str, str]:
        """The (organization id, project id) an API key belongs to."""
        url = f"{self._settings.api_url}{INTROSPECT_PATH}"
        request = self._http.build_request("POST", url, content=b"")
        response = await send(self._http, request)
        if not response.is_success:
            body = body_excerpt(response)
            raise AuthenticationError(
                f"API key introspection failed (HTTP {response.status_code}): {body}",
                status=response.status_code,
                body=body,
            )
        scope = structure(parse_json(response), IntrospectScope, "introspect response")
        return scope.organization_id, scope.project_id

    async def _checked_json(self, request: httpx.Request, failure: str) -> Any:
        # Prepare and complete word their failures themselves (docs/protocol.md#status-mapping) but
        # classify them like every other call, so a 503 on prepare is still worth a retry.
        response = await send(self._http, request)
        if not response.is_success:
            status, body = response.status_code, body_excerpt(response)
            raise error_for_status(
                request, status, body, message=f"{failure} (HTTP {status}): {body}"
            )
        return parse_json(response)


def _require_template_fields(data: Any, reference: str) -> None:
    # The reference words these three misses specifically; keep its wording.
    if not isinstance(data, dict):
        return
    for key, noun in TEMPLATE_REQUIRED:
        if not isinstance(data.get(key), str):
            raise ResponseError(
                f"platform returned a template lookup for {reference!r} without {noun}"
            )
