"""Default registered names for builds and imports, and POSIX path normalisation."""

from __future__ import annotations

import os
from pathlib import PurePath

# Used when a Dockerfile path yields no usable name (e.g. `/Dockerfile`).
FALLBACK_DOCKERFILE_NAME = "sandbox-image"
# Used when an image reference yields no repository name (e.g. `registry:5000/`).
FALLBACK_IMPORT_NAME = "imported-image"
DOCKERFILE_STEM = "dockerfile"


def default_name_for_dockerfile(path: str | os.PathLike[str]) -> str:
    """The name a Dockerfile build registers when none is given.

    A file called `Dockerfile` (any case, any suffix such as `Dockerfile.prod`) says nothing about
    the image, so its directory names it; any other file names the image by its stem
    (`api.Dockerfile` -> `api`).
    """
    pure = PurePath(path)
    stem = pure.stem
    if stem.lower() == DOCKERFILE_STEM:
        return pure.parent.name.strip() or FALLBACK_DOCKERFILE_NAME
    return stem or FALLBACK_DOCKERFILE_NAME


def default_name_for_image(reference: str) -> str:
    """The name an import registers when none is given: the repository's last path segment.

    `pytorch/pytorch:2.4.1-runtime` -> `pytorch`; `ghcr.io/org/app@sha256:...` -> `app`.
    """
    without_digest = reference.split("@", 1)[0]
    last_segment = without_digest.rsplit("/", 1)[-1]
    repository, colon, tag = last_segment.rpartition(":")
    name = repository if colon and tag else last_segment
    return name or FALLBACK_IMPORT_NAME


def normalize_posix(path: str) -> str:
    """An absolute POSIX path with `.`, `..` and repeated slashes resolved lexically.

    Remote paths on the builder are joined as text; resolving them here keeps `..` from
    escaping the build directory by accident.
    """
    parts: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if parts:
                parts.pop()
            continue
        parts.append(segment)
    return "/" + "/".join(parts)
