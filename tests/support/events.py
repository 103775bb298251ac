"""The published event schema (docs/events.schema.json), for checking what kiln emits."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "events.schema.json"


@functools.cache
def _validator() -> Any:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def check_event(event: dict[str, Any]) -> dict[str, Any]:
    """``event`` when it validates against the schema; else the test fails, naming why."""
    errors = sorted(_validator().iter_errors(event), key=lambda e: list(e.path))
    assert not errors, f"{event} does not match the schema: {[e.message for e in errors]}"
    return event
