"""Registered templates, persisted as one JSON file so a restarted emulator still knows them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kiln.errors import ConfigError


def _load(path: Path) -> dict[str, dict[str, Any]]:
    try:
        loaded = json.loads(path.read_text())
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
        self._by_name: dict[str, dict[str, Any]] = _load(path) if path.is_file() else {}

    def by_name(self, name: str) -> dict[str, Any] | None:
        return self._by_name.get(name)

    def by_id(self, template_id: str) -> dict[str, Any] | None:
        return next((t for t in self._by_name.values() if t["id"] == template_id), None)

    def all(self) -> list[dict[str, Any]]:
        return list(self._by_name.values())

    def register(self, template: dict[str, Any]) -> None:
        self._by_name[template["name"]] = template
        self._save()

    def clear(self) -> None:
        self._by_name.clear()
        self._save()

    def _save(self) -> None:
        # Write then rename: a crash mid-write must not lose every template.
        partial = self._path.with_name(self._path.name + ".partial")
        partial.write_text(json.dumps(self._by_name, indent=2, sort_keys=True))
        os.replace(partial, self._path)
