"""Registered templates, persisted as one JSON file so a restarted emulator still knows them.

Several emulators may share one data directory (concurrent ``kiln build`` processes on the
embedded default each start one), so the file, not memory, is the truth: every read loads it,
and every change is a read-modify-write under an exclusive ``flock`` on a lock file beside it,
then an atomic rename. No registration is lost, and no reader sees half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kiln.errors import ConfigError

LOCK_SUFFIX = ".lock"


def _load(path: Path) -> dict[str, dict[str, Any]]:
    try:
        loaded = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as problem:
        raise ConfigError(
            f"the emulator's template file {path} is not valid JSON: {problem}",
            hint="delete it (its templates are lost) or start with another --data-dir",
        ) from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"the emulator's template file {path} must hold a JSON object")
    return loaded


class TemplateStore:
    """Templates by name (a later build of the same name replaces the earlier one)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock_path = path.with_name(path.name + LOCK_SUFFIX)
        # Refuse a broken file at start, not at the first build.
        self._read()

    @contextlib.contextmanager
    def _locked(self, kind: int) -> Iterator[None]:
        with self._lock_path.open("a") as lock:
            fcntl.flock(lock, kind)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict[str, dict[str, Any]]:
        with self._locked(fcntl.LOCK_SH):
            return _load(self._path)

    def by_name(self, name: str) -> dict[str, Any] | None:
        return self._read().get(name)

    def by_id(self, template_id: str) -> dict[str, Any] | None:
        return next((t for t in self._read().values() if t["id"] == template_id), None)

    def all(self) -> list[dict[str, Any]]:
        return list(self._read().values())

    def register(self, template: dict[str, Any]) -> None:
        with self._locked(fcntl.LOCK_EX):
            templates = _load(self._path)
            templates[template["name"]] = template
            self._save(templates)

    def remove(self, name: str) -> bool:
        """Forget the template registered under ``name``; False when there is none."""
        with self._locked(fcntl.LOCK_EX):
            templates = _load(self._path)
            if templates.pop(name, None) is None:
                return False
            self._save(templates)
            return True

    def clear(self) -> None:
        with self._locked(fcntl.LOCK_EX):
            self._save({})

    def _save(self, templates: dict[str, dict[str, Any]]) -> None:
        # Write then rename: a crash mid-write must not lose every template. The temporary name is
        # this writer's own, though the lock already keeps writers apart.
        partial = self._path.with_name(f"{self._path.name}.{secrets.token_hex(4)}.partial")
        partial.write_text(json.dumps(templates, indent=2, sort_keys=True))
        os.replace(partial, self._path)
