"""The local Docker registry credentials handed to the builder as `dockerConfigJson` (§5.5)."""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
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
    if not isinstance(entry, Mapping):
        raise _fail(path, f"the entry of registry {registry!r} is not an object")
    kept = {}
    auth = _basic_auth(path, registry, entry)
    if auth is not None:
        kept[_AUTH] = auth
    token = entry.get(_IDENTITY_TOKEN)
    if isinstance(token, str) and token:
        kept[_IDENTITY_TOKEN] = token
    return kept


def load_docker_config_json(path: Path | None = None) -> str | None:
    """`{"auths": …}` with the registries that have credentials, as a JSON string.

    None when there is no config file or it holds no credentials. `path` defaults to
    :func:`default_docker_config_path`. Errors name the file and the problem, never a credential.
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
    if not kept:
        return None
    return json.dumps({"auths": kept}, sort_keys=True, separators=(",", ":"))
