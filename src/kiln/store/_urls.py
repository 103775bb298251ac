"""Store URLs: what they may look like, where the default one points, and how to show one safely.

The forms follow SQLAlchemy's, which users already write: ``sqlite:///relative.db`` and
``sqlite:////absolute.db`` (three slashes, then the path), ``postgresql://user:pw@host/db``.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import attrs

from kiln.errors import UsageError
from kiln.store._psycopg import import_psycopg

STORE_ENV = "KILN_STORE"

ACCEPTED_FORMS = (
    "memory://",
    "sqlite:///relative/path.db",
    "sqlite:////absolute/path.db",
    "postgresql://user:password@host:5432/database",
)

_SQLITE_PREFIX = "sqlite:///"
_POSTGRES_SCHEMES = ("postgresql", "postgres")
_DEFAULT_FILE = Path("kiln") / "builds.db"
_REDACTED = "***"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


@attrs.frozen
class StoreLocation:
    """A parsed store URL: ``path`` for SQLite, ``url`` (as given) for PostgreSQL."""

    kind: Literal["memory", "sqlite", "postgres"]
    path: Path | None = None
    url: str | None = None


def default_store_url(env: Mapping[str, str] | None = None) -> str:
    """The SQLite file under the XDG state directory: ``$XDG_STATE_HOME/kiln/builds.db``, else
    ``~/.local/state/kiln/builds.db``."""
    env = os.environ if env is None else env
    state_home = env.get("XDG_STATE_HOME", "")
    # The XDG spec says a relative value is invalid and must be ignored.
    if not os.path.isabs(state_home):
        home = env.get("HOME") or str(Path.home())
        state_home = os.path.join(home, ".local", "state")
    return _SQLITE_PREFIX + str(Path(state_home) / _DEFAULT_FILE)


def parse_store_url(url: str) -> StoreLocation:
    """Check a store URL and say which backend it names; UsageError lists the accepted forms."""
    if url == "memory://":
        return StoreLocation(kind="memory")
    if url.startswith(_SQLITE_PREFIX) and len(url) > len(_SQLITE_PREFIX):
        return StoreLocation(kind="sqlite", path=Path(url[len(_SQLITE_PREFIX) :]))
    scheme, separator, _ = url.partition("://")
    if separator and scheme in _POSTGRES_SCHEMES:
        _check_conninfo(url)
        return StoreLocation(kind="postgres", url=url)
    raise UsageError(
        f"unsupported store URL ({_describe(url)})",
        hint=f"use one of: {', '.join(ACCEPTED_FORMS)} (--store or ${STORE_ENV})",
    )


def _describe(url: str) -> str:
    # Only the scheme is quoted back: the rest of a URL we cannot parse may hold a password, and
    # without knowing its form we cannot tell where.
    scheme = url.partition(":")[0]
    if scheme == "sqlite":
        return "a sqlite URL needs three slashes and then the path"
    if url and _SCHEME.fullmatch(scheme):
        return f"scheme {scheme!r}"
    return "no scheme"


def _check_conninfo(url: str) -> None:
    # libpq's own parser, so that what it would refuse at connect time is refused here, as a
    # usage error, before anything runs.
    psycopg = import_psycopg()
    try:
        import_psycopg("psycopg.conninfo").conninfo_to_dict(url)
    except psycopg.Error as error:
        raise UsageError(
            f"invalid PostgreSQL URL {redact_url(url)}: {scrub(str(error).strip(), url)}",
            hint=f"write it as {ACCEPTED_FORMS[-1]} (percent-encode special characters)",
        ) from None


def redact_url(url: str) -> str:
    """The URL with any password replaced, fit for messages and logs; the rest left verbatim."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        # Too malformed to find the password in: show none of it past the scheme.
        return f"{url.partition(':')[0]}:{_REDACTED}"
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if at and colon:
        url = url.replace(f"//{parts.netloc}", f"//{user}:{_REDACTED}@{hostport}", 1)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    if any(key == "password" for key, _ in query):
        hidden = [(k, _REDACTED if k == "password" else v) for k, v in query]
        url = url.replace(f"?{parts.query}", f"?{urllib.parse.urlencode(hidden, safe='/*')}", 1)
    return url


def scrub(text: str, url: str) -> str:
    """``text`` with ``url`` and every password found in it replaced, for driver messages we pass
    on (libpq quotes the URL it could not parse, password and all)."""
    text = text.replace(url, redact_url(url))
    for secret in _passwords(url):
        text = text.replace(secret, _REDACTED)
    return text


def _passwords(url: str) -> list[str]:
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return []
    found = [parts.password] if parts.password else []
    found += [v for k, v in urllib.parse.parse_qsl(parts.query) if k == "password" and v]
    # The driver may quote the raw or the decoded form.
    return [form for secret in found for form in {secret, urllib.parse.unquote(secret)}]
