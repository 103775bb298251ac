"""The builder stand-in's image pulls: which registries need credentials, and Docker's refusal.

With ``private_registries`` configured, the builder "pulls" every image the build needs from a
registry (the Dockerfile's ``FROM`` images and ``COPY --from`` / ``RUN --mount from=`` images
that are neither build stages nor registered templates) and refuses one on a private host
unless ``dockerConfigJson`` in spec.json carries that host's credentials, with the message
``docker pull`` prints. Nothing of the credentials is kept or echoed.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import shlex
from collections.abc import Iterable, Mapping
from typing import Any

DOCKER_HUB = "docker.io"
SCRATCH = "scratch"
_FROM = re.compile(r"^\s*FROM\s+(.*)$", re.IGNORECASE)
_COPY = re.compile(r"^\s*(COPY|ADD)\s", re.IGNORECASE)
_RUN = re.compile(r"^\s*RUN\s", re.IGNORECASE)
_MOUNT_FROM = re.compile(r"(?:^|,)from=([^,\s]+)")


def registry_of(reference: str) -> str:
    """Docker's rule: the first path component names a registry when it has a dot or a port, or
    is ``localhost``; anything else is on Docker Hub."""
    first, slash, _rest = reference.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return DOCKER_HUB


def _from_images(line: str, stages: set[str]) -> list[str]:
    words = [w for w in shlex.split(line, posix=True) if not w.startswith("--")]
    if not words:
        return []
    if len(words) >= 3 and words[1].lower() == "as":
        stages.add(words[2].lower())
    return [words[0]]


def _side_images(line: str) -> list[str]:
    found = []
    for word in line.split():
        if word.startswith("--from="):
            found.append(word.removeprefix("--from="))
        elif word.startswith("--mount="):
            found += _MOUNT_FROM.findall(word.removeprefix("--mount="))
    return found


def needed_images(dockerfile: str, local: Iterable[str]) -> list[str]:
    """Registry images the Dockerfile needs, in first-seen order (stages and locals left out)."""
    stages: set[str] = set()
    seen: list[str] = []
    for line in dockerfile.splitlines():
        if match := _FROM.match(line):
            candidates = _from_images(match.group(1), stages)
        elif _COPY.match(line) or _RUN.match(line):
            candidates = _side_images(line)
        else:
            continue
        seen += [c for c in candidates if c not in seen]
    skipped = {SCRATCH, *stages, *local}
    return [
        image
        for image in seen
        if image.lower() not in skipped and image not in skipped and "$" not in image
    ]


def _repository(image: str) -> str:
    """The reference without its digest and tag (a port's ':' is not a tag's)."""
    name = image.split("@", 1)[0]
    last_colon, last_slash = name.rfind(":"), name.rfind("/")
    return name[:last_colon] if last_colon > last_slash else name


def _host_of_auth_key(key: str) -> str:
    # Docker config keys may be bare hosts or URLs ("https://index.docker.io/v1/").
    host = key.split("://", 1)[-1].split("/", 1)[0]
    return DOCKER_HUB if host in ("index.docker.io", "registry-1.docker.io") else host


def _matches(entry: Mapping[str, Any], user: str, password: str) -> bool:
    token = entry.get("identitytoken")
    if isinstance(token, str) and token:
        return hmac.compare_digest(token.encode(), password.encode())
    auth = entry.get("auth")
    if isinstance(auth, str):
        try:
            decoded = base64.b64decode(auth, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        given_user, _, given_password = decoded.partition(":")
    else:
        given_user, given_password = entry.get("username", ""), entry.get("password", "")
    return (
        isinstance(given_user, str)
        and isinstance(given_password, str)
        and hmac.compare_digest(given_user.encode(), user.encode())
        and hmac.compare_digest(given_password.encode(), password.encode())
    )


def _auths(docker_config_json: object) -> dict[str, Mapping[str, Any]]:
    if not isinstance(docker_config_json, str):
        return {}
    try:
        config = json.loads(docker_config_json)
    except ValueError:
        return {}
    auths = config.get("auths") if isinstance(config, dict) else None
    if not isinstance(auths, dict):
        return {}
    return {_host_of_auth_key(k): v for k, v in auths.items() if isinstance(v, dict)}


def pull_refusal(
    image: str, private: Mapping[str, tuple[str, str]], docker_config_json: object
) -> str | None:
    """Docker's error for pulling ``image``, or None when the pull is allowed."""
    host = registry_of(image)
    if host not in private:
        return None
    repository = _repository(image)
    entry = _auths(docker_config_json).get(host)
    if entry is None:
        return (
            f"Error response from daemon: pull access denied for {repository}, repository does "
            "not exist or may require 'docker login': denied: requested access to the resource "
            "is denied"
        )
    user, password = private[host]
    if not _matches(entry, user, password):
        return (
            f'Error response from daemon: Get "https://{host}/v2/": unauthorized: incorrect '
            "username or password"
        )
    return None
