"""Docker image references checked as BuildKit checks them (distribution/reference).

BuildKit parses every stage's base name, and every image ``COPY --from`` names, with
``reference.ParseNormalizedNamed`` and fails the build when it is not a valid reference; kiln
makes the same check while planning, with the same wording, so the mistake is reported before a
sandbox exists.
"""

from __future__ import annotations

import re

# The grammar of distribution/reference (regexp.go), piece for piece.
_ALPHANUMERIC = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})"
_DOMAIN_AND_PORT = rf"{_HOST}(?::[0-9]+)?"
_PATH_COMPONENT = rf"{_ALPHANUMERIC}(?:{_SEPARATOR}{_ALPHANUMERIC})*"
_REMOTE_NAME = rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][0-9a-fA-F]{32,}"
_REFERENCE = re.compile(
    rf"((?:{_DOMAIN_AND_PORT}/)?{_REMOTE_NAME})(?::({_TAG}))?(?:@({_DIGEST}))?", re.ASCII
)
_IDENTIFIER = re.compile(r"[a-f0-9]{64}")
NAME_TOTAL_LENGTH_MAX = 255
DEFAULT_DOMAIN = "docker.io"
_LEGACY_DEFAULT_DOMAIN = "index.docker.io"
_LOCALHOST = "localhost"
_OFFICIAL_PREFIX = "library/"
# The digest algorithms BuildKit's digest package knows, and their hex lengths.
_DIGEST_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}

INVALID_FORMAT = "invalid reference format"


def reference_problem(reference: str) -> str | None:
    """Why BuildKit would refuse `reference` as an image name (its wording), or None."""
    if _IDENTIFIER.fullmatch(reference):
        return f"invalid repository name ({reference}), cannot specify 64-byte hexadecimal strings"
    domain, remainder = _split_docker_domain(reference)
    remote = remainder.split(":", 1)[0]
    if remote.lower() != remote:
        return f"{INVALID_FORMAT}: repository name ({remote}) must be lowercase"
    return _parse_problem(f"{domain}/{remainder}")


def _parse_problem(text: str) -> str | None:
    """distribution/reference's ``Parse``."""
    match = _REFERENCE.fullmatch(text)
    if match is None:
        if not text:
            return "repository name must have at least one component"
        if _REFERENCE.fullmatch(text.lower()):
            return f"{INVALID_FORMAT}: repository name must be lowercase"
        return INVALID_FORMAT
    if len(match.group(1)) > NAME_TOTAL_LENGTH_MAX:
        return f"repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters"
    digest = match.group(3)
    if digest is not None:
        algorithm, _, encoded = digest.partition(":")
        expected = _DIGEST_LENGTHS.get(algorithm)
        if expected is None:
            return "unsupported digest algorithm"
        if len(encoded) != expected or encoded.lower() != encoded:
            return (
                "invalid checksum digest length"
                if len(encoded) != expected
                else ("invalid checksum digest format")
            )
    return None


def _split_docker_domain(name: str) -> tuple[str, str]:
    maybe_domain, slash, maybe_remote = name.partition("/")
    if not slash:
        return DEFAULT_DOMAIN, _OFFICIAL_PREFIX + name
    if maybe_domain == _LOCALHOST:
        domain, remote = maybe_domain, maybe_remote
    elif maybe_domain == _LEGACY_DEFAULT_DOMAIN:
        domain, remote = DEFAULT_DOMAIN, maybe_remote
    elif any(ch in maybe_domain for ch in ".:") or maybe_domain.lower() != maybe_domain:
        domain, remote = maybe_domain, maybe_remote
    else:
        domain, remote = DEFAULT_DOMAIN, name
    if domain == DEFAULT_DOMAIN and "/" not in remote:
        remote = _OFFICIAL_PREFIX + remote
    return domain, remote
