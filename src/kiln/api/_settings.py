"""Where kiln talks to and as whom: settings, credentials, and the URLs derived from them
(docs/protocol.md#addresses)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal
from urllib.parse import quote

import attrs
import httpx

from kiln._version import __version__
from kiln.errors import ConfigError

DEFAULT_API_URL = "https://api.tensorlake.ai"
DEFAULT_NAMESPACE = "default"
# Where sandboxes live when the API host gives no hint (not loopback, not `api.*`).
FALLBACK_LIFECYCLE_URL = "https://sandbox.tensorlake.ai"
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1"})
API_HOST_PREFIX = "api."
ALLOWED_SCHEMES = frozenset({"http", "https"})

ENV_API_URL = "TENSORLAKE_API_URL"
ENV_API_KEY = "TENSORLAKE_API_KEY"
ENV_PAT = "TENSORLAKE_PAT"
ENV_ORGANIZATION_ID = "TENSORLAKE_ORGANIZATION_ID"
ENV_PROJECT_ID = "TENSORLAKE_PROJECT_ID"
ENV_NAMESPACE = "INDEXIFY_NAMESPACE"
ENV_PROXY_URL = "TENSORLAKE_SANDBOX_PROXY_URL"

AuthMode = Literal["api_key", "pat"]

PAT_SCOPE_MESSAGE = (
    "Organization ID and project ID are required for sandbox image builds with PAT authentication"
)
PAT_SCOPE_HINT = f"set {ENV_ORGANIZATION_ID} and {ENV_PROJECT_ID}, or use {ENV_API_KEY} instead"


@attrs.frozen
class Credentials:
    """A bearer token and the scope it is used in.

    An API key is scoped by the token itself; a personal access token (PAT) needs the organization
    and project named explicitly, in the routes and in scope headers.
    """

    token: str = attrs.field(repr=False)
    mode: AuthMode
    organization_id: str | None = None
    project_id: str | None = None

    def __attrs_post_init__(self) -> None:
        if not self.token:
            raise ConfigError("the API token is empty", hint=_NO_TOKEN_HINT)
        if self.mode == "pat" and not (self.organization_id and self.project_id):
            raise ConfigError(PAT_SCOPE_MESSAGE, hint=PAT_SCOPE_HINT)

    @property
    def scope_headers(self) -> dict[str, str]:
        """Headers that name the scope; only PAT requests carry them."""
        if self.mode != "pat":
            return {}
        return {
            "X-Forwarded-Organization-Id": str(self.organization_id),
            "X-Forwarded-Project-Id": str(self.project_id),
        }


_NO_TOKEN_HINT = (
    f"set {ENV_API_KEY}, or {ENV_PAT} together with {ENV_ORGANIZATION_ID} and {ENV_PROJECT_ID}"
)


def _strip_trailing_slash(url: str) -> str:
    # The reference concatenates paths onto the URL verbatim, so `https://api.x/` produced `//`
    # in every route. Normalising once here removes that whole class of mistakes.
    return url.strip().rstrip("/")


def _check_api_url(_instance: object, _attribute: object, url: str) -> None:
    check_api_url(url)


def check_api_url(url: str) -> None:
    """Refuse an API URL that is not absolute http(s), or that carries credentials.

    ``https://user:pass@host`` would make httpx send Basic auth in place of the bearer token, and
    the URL is persisted with the build: credentials belong in the environment, never in it.
    The error names the URL without its user part.
    """
    parsed = _parse_url(url)
    if parsed is None:
        raise ConfigError(
            f"API URL {_without_userinfo(url)!r} is not an absolute http(s) URL",
            hint=f"set {ENV_API_URL} to something like {DEFAULT_API_URL}",
        )
    if parsed.userinfo:
        raise ConfigError(
            f"API URL {str(parsed.copy_with(userinfo=b''))!r} must not carry a user name or"
            " password (user:password@)",
            hint=f"remove them from the URL; kiln authenticates with {ENV_API_KEY} or {ENV_PAT}",
        )


def _without_userinfo(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    host_part, slash, path = rest.partition("/")
    if not sep or "@" not in host_part:
        return url
    return f"{scheme}{sep}{host_part.rpartition('@')[2]}{slash}{path}"


def _parse_url(url: str) -> httpx.URL | None:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return None
    if parsed.scheme not in ALLOWED_SCHEMES or not parsed.host:
        return None
    return parsed


def is_loopback(url: str) -> bool:
    """True for the hosts the reference treats as a local server (exactly these two names)."""
    parsed = _parse_url(url)
    return parsed is not None and parsed.host in LOOPBACK_HOSTS


@attrs.frozen
class ApiSettings:
    """Everything needed to reach Tensorlake: the API URL, the credentials, the namespace."""

    api_url: str = attrs.field(converter=_strip_trailing_slash, validator=_check_api_url)
    credentials: Credentials
    namespace: str = DEFAULT_NAMESPACE
    proxy_url_override: str | None = None
    user_agent: str = f"kiln/{__version__}"

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        api_url: str | None = None,
        api_key: str | None = None,
        pat: str | None = None,
        organization_id: str | None = None,
        project_id: str | None = None,
        namespace: str | None = None,
    ) -> ApiSettings:
        """Settings from Tensorlake's environment variables; each argument given wins over its
        variable. An API key wins over a PAT (as in Tensorlake's CLI); blank values count as unset.
        """
        source = os.environ if env is None else env

        def pick(argument: str | None, name: str) -> str | None:
            value = argument if argument is not None else source.get(name, "")
            return value.strip() or None

        credentials = _credentials(
            api_key=pick(api_key, ENV_API_KEY),
            pat=pick(pat, ENV_PAT),
            organization_id=pick(organization_id, ENV_ORGANIZATION_ID),
            project_id=pick(project_id, ENV_PROJECT_ID),
            explicit_pat=pat is not None and api_key is None,
        )
        return cls(
            api_url=pick(api_url, ENV_API_URL) or DEFAULT_API_URL,
            credentials=credentials,
            namespace=pick(namespace, ENV_NAMESPACE) or DEFAULT_NAMESPACE,
            proxy_url_override=pick(None, ENV_PROXY_URL),
        )

    @property
    def platform_prefix(self) -> str:
        """The route prefix of the platform API (docs/protocol.md#auth-modes): token-scoped for API
        keys, explicit for PATs."""
        creds = self.credentials
        if creds.mode == "api_key":
            return "/platform/v1"
        org = quote(str(creds.organization_id), safe="")
        project = quote(str(creds.project_id), safe="")
        return f"/platform/v1/organizations/{org}/projects/{project}"

    @property
    def lifecycle_base_url(self) -> str:
        """The sandbox lifecycle service (docs/protocol.md#addresses): loopback as is, `api.X` →
        `sandbox.X`, else SaaS."""
        parsed = _parse_url(self.api_url)
        if parsed is None:  # unreachable after validation; kept total for the type checker
            return FALLBACK_LIFECYCLE_URL
        if parsed.host in LOOPBACK_HOSTS:
            return self.api_url
        if parsed.host.startswith(API_HOST_PREFIX):
            return f"{parsed.scheme}://sandbox.{parsed.host.removeprefix(API_HOST_PREFIX)}"
        return FALLBACK_LIFECYCLE_URL

    @property
    def lifecycle_path(self) -> str:
        """Sandbox routes are namespaced only on a local server (docs/protocol.md#addresses)."""
        if is_loopback(self.api_url):
            return f"/v1/namespaces/{quote(self.namespace, safe='')}/sandboxes"
        return "/sandboxes"


def _credentials(
    *,
    api_key: str | None,
    pat: str | None,
    organization_id: str | None,
    project_id: str | None,
    explicit_pat: bool,
) -> Credentials:
    # A PAT passed as an argument beats an API key that only comes from the environment:
    # arguments win over the environment.
    if pat and (explicit_pat or not api_key):
        return Credentials(
            token=pat, mode="pat", organization_id=organization_id, project_id=project_id
        )
    if api_key:
        # HEAD drops any org/project given with an API key: the key already names its scope.
        return Credentials(token=api_key, mode="api_key")
    raise ConfigError("no Tensorlake credentials were found", hint=_NO_TOKEN_HINT)
