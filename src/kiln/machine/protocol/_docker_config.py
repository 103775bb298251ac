"""The local Docker registry credentials handed to the builder as `dockerConfigJson`
(docs/protocol.md#spec-json).

Resolved as Docker resolves them: a registry named in `credHelpers` asks that helper, else a
`credsStore` asks the store's helper, else the inline `auths` entry counts. A helper is the
program `docker-credential-<name>`, run as `docker-credential-<name> get` with the registry's
server address on stdin; it answers `{"ServerURL", "Username", "Secret"}`, where the username
`<token>` means the secret is an identity token. Helpers are asked only about the registries the
build pulls from, and nothing they answer is kept beyond the spec being written.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import subprocess
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from kiln.errors import ConfigError

# Docker's own convention: $DOCKER_CONFIG names the directory, else ~/.docker.
DOCKER_CONFIG_ENV = "DOCKER_CONFIG"
_DEFAULT_DIR = Path(".docker")
_CONFIG_FILE = "config.json"
# The only two credential kinds the builder understands; anything else (credential helpers,
# per-registry settings) is dropped so that the spec never carries what the builder cannot use.
_AUTH = "auth"
_IDENTITY_TOKEN = "identitytoken"
_CREDS_STORE = "credsStore"
_CRED_HELPERS = "credHelpers"
_HELPER_PREFIX = "docker-credential-"
# A helper may ask a keychain or a cloud for the secret; one that has not answered by then is
# treated as failed (a warning) rather than holding the build.
HELPER_TIMEOUT_S = 30.0
# What a helper prints when it has nothing for the registry: no credentials, not a failure.
_NOT_FOUND_MARKER = "credentials not found"
# The helper's username for an identity token (an OAuth refresh token) instead of a password.
_TOKEN_USERNAME = "<token>"
# Docker Hub's key in config.json and its server address for helpers.
DOCKER_HUB = "docker.io"
DOCKER_HUB_SERVER = "https://index.docker.io/v1/"
_DOCKER_HUB_ALIASES = frozenset({DOCKER_HUB, "index.docker.io", "registry-1.docker.io"})
# A helper's own error output goes into the warning, one line, no longer than this.
_HELPER_MESSAGE_CHARS = 200
_ERROR = "Failed to load Docker config"
_HINT = "fix or remove the file, or point $DOCKER_CONFIG at a directory with a valid config.json"


def default_docker_config_path() -> Path:
    """Where Docker keeps its client config for this user."""
    directory = os.environ.get(DOCKER_CONFIG_ENV, "").strip()
    base = Path(directory) if directory else Path.home() / _DEFAULT_DIR
    return base / _CONFIG_FILE


def _fail(path: Path, reason: str) -> ConfigError:
    # Reasons are written here, never copied from the file: the file holds secrets.
    return ConfigError(f"{_ERROR}: {path}: {reason}", hint=_HINT)


def _read(path: Path) -> Any:
    """The parsed file, or None when there is no file (no file means no credentials)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise _fail(path, "not valid UTF-8") from None
    except OSError as exc:
        raise _fail(path, exc.strerror or type(exc).__name__) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(path, f"invalid JSON at line {exc.lineno}, column {exc.colno}") from None


def _basic_auth(path: Path, registry: str, entry: Mapping[str, Any]) -> str | None:
    """`auth` as base64("user:password"): kept when well-formed, else built from the two fields."""
    encoded = entry.get(_AUTH)
    if isinstance(encoded, str) and encoded:
        try:
            decoded = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            decoded = b""
        if b":" not in decoded:
            raise _fail(path, f"the auth of registry {registry!r} is not base64 of user:password")
        return base64.b64encode(decoded).decode("ascii")
    username, password = entry.get("username"), entry.get("password")
    if isinstance(username, str) and isinstance(password, str):
        return base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return None


def _credentials(path: Path, registry: str, entry: object) -> dict[str, str]:
    """An `auths` entry as the builder takes it: an identity token alone when there is one (as
    Docker sends it: the token replaces the password), else basic auth."""
    if not isinstance(entry, Mapping):
        raise _fail(path, f"the entry of registry {registry!r} is not an object")
    token = entry.get(_IDENTITY_TOKEN)
    if isinstance(token, str) and token:
        return {_IDENTITY_TOKEN: token}
    auth = _basic_auth(path, registry, entry)
    return {} if auth is None else {_AUTH: auth}


def registry_of(image: str) -> str:
    """The registry an image reference pulls from, as Docker splits it (`docker.io` when the
    first path component is no host: no dot, no port, not localhost)."""
    first, slash, _ = image.partition("/")
    if not slash or (
        "." not in first and ":" not in first and first != "localhost" and first == first.lower()
    ):
        return DOCKER_HUB
    return DOCKER_HUB if first in _DOCKER_HUB_ALIASES else first


def config_key(registry: str) -> str:
    """The key Docker files a registry's credentials under (Docker Hub's is the index URL)."""
    return DOCKER_HUB_SERVER if registry == DOCKER_HUB else registry


Warn = Callable[[str], None]


def _ignore(message: str) -> None:
    """No warning sink given: nothing to tell."""


def load_docker_config_json(
    path: Path | None = None, *, registries: Iterable[str] = (), warn: Warn = _ignore
) -> str | None:
    """`{"auths": …}` with the registries that have credentials, as a JSON string.

    Inline `auths` entries count for every registry they name; `credHelpers` and `credsStore`
    are asked about ``registries`` (the ones the build pulls from) and win over inline entries,
    as in Docker. A helper that fails is a warning through ``warn`` naming the registry; the
    build goes on without its credentials. None when nothing holds credentials. `path`
    defaults to :func:`default_docker_config_path`. Errors name the file and the problem,
    never a credential.
    """
    config_path = path if path is not None else default_docker_config_path()
    config = _read(config_path)
    if config is None:
        return None
    if not isinstance(config, Mapping):
        raise _fail(config_path, "the top level is not an object")
    auths = config.get("auths", {})
    if not isinstance(auths, Mapping):
        raise _fail(config_path, '"auths" is not an object')
    kept = {}
    for registry, entry in auths.items():
        credentials = _credentials(config_path, str(registry), entry)
        if credentials:
            kept[str(registry)] = credentials
    for registry in dict.fromkeys(registries):
        helper = _helper_for(config_path, config, registry)
        if helper is None:
            continue
        key = config_key(registry)
        kept.pop(key, None)
        credentials = _from_helper(helper, registry, warn)
        if credentials:
            kept[key] = credentials
    if not kept:
        return None
    return json.dumps({"auths": kept}, sort_keys=True, separators=(",", ":"))


async def read_docker_config_json(registries: Iterable[str], warn: Warn) -> str | None:
    """:func:`load_docker_config_json` of the default config, off the event loop (credential
    helpers are programs: a keychain, a cloud CLI), ``warn`` called on the loop. With no config
    file there is nothing to read: no thread is started for it."""
    path = default_docker_config_path()
    if not os.path.lexists(path):
        return None
    loop = asyncio.get_running_loop()

    def warn_on_loop(message: str) -> None:
        loop.call_soon_threadsafe(warn, message)

    return await asyncio.to_thread(
        load_docker_config_json, path, registries=list(registries), warn=warn_on_loop
    )


def _helper_for(path: Path, config: Mapping[str, Any], registry: str) -> str | None:
    helpers = config.get(_CRED_HELPERS, {})
    if not isinstance(helpers, Mapping):
        raise _fail(path, f'"{_CRED_HELPERS}" is not an object')
    for key in (registry, config_key(registry)):
        named = helpers.get(key)
        if isinstance(named, str) and named:
            return named
    store = config.get(_CREDS_STORE)
    return store if isinstance(store, str) and store else None


def _from_helper(helper: str, registry: str, warn: Warn) -> dict[str, str]:
    """The credentials `docker-credential-<helper> get` gives for ``registry``; {} (with a
    warning unless it simply has none) when it gives none."""
    program = _HELPER_PREFIX + helper
    try:
        answer = subprocess.run(
            [program, "get"],
            input=config_key(registry).encode(),
            capture_output=True,
            timeout=HELPER_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError:
        warn(_helper_warning(registry, program, "it is not on PATH"))
        return {}
    except (OSError, subprocess.TimeoutExpired) as error:
        reason = (
            "it did not answer in time"
            if isinstance(error, subprocess.TimeoutExpired)
            else (error.strerror or type(error).__name__)
        )
        warn(_helper_warning(registry, program, reason))
        return {}
    output = (answer.stdout or b"").decode(errors="replace")
    if answer.returncode != 0:
        message = (output + (answer.stderr or b"").decode(errors="replace")).strip()
        if _NOT_FOUND_MARKER not in message.lower():
            warn(_helper_warning(registry, program, _first_line(message, answer.returncode)))
        return {}
    return _helper_credentials(output, registry, program, warn)


def _helper_credentials(output: str, registry: str, program: str, warn: Warn) -> dict[str, str]:
    try:
        data = json.loads(output)
    except json.JSONDecodeError:
        warn(_helper_warning(registry, program, "its answer is not JSON"))
        return {}
    username = data.get("Username") if isinstance(data, Mapping) else None
    secret = data.get("Secret") if isinstance(data, Mapping) else None
    if not isinstance(username, str) or not isinstance(secret, str) or not secret:
        warn(_helper_warning(registry, program, "its answer has no Username and Secret"))
        return {}
    if username == _TOKEN_USERNAME:
        return {_IDENTITY_TOKEN: secret}
    return {_AUTH: base64.b64encode(f"{username}:{secret}".encode()).decode("ascii")}


def _first_line(message: str, code: int) -> str:
    line = message.splitlines()[0] if message else ""
    return f"exit code {code}" + (f": {line[:_HELPER_MESSAGE_CHARS]}" if line else "")


def _helper_warning(registry: str, program: str, reason: str) -> str:
    return (
        f"No credentials for registry {registry}: Docker credential helper {program} failed "
        f"({reason}); pulling from it without credentials. Check `docker login {registry}`."
    )
