"""Request-body checks that answer 400 with the offending field named."""

from __future__ import annotations

import json
import math
from typing import Any, TypeVar

from starlette.requests import Request

from kiln.emulator._errors import bad_request

T = TypeVar("T")
_MISSING = object()


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _no_constants(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON does not, and neither does any real client.
    raise ValueError(f"{name} is not valid JSON")


async def json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = (
            json.loads(raw, parse_float=_finite, parse_constant=_no_constants)
            if raw.strip()
            else {}
        )
    except ValueError as problem:
        raise bad_request(f"request body is not valid JSON: {problem}") from None
    if not isinstance(body, dict):
        raise bad_request(f"request body must be a JSON object, got {type(body).__name__}")
    return body


def field(body: dict[str, Any], key: str, kind: type[T], *, where: str = "") -> T:
    """A required field of the given JSON type (bool is never accepted as a number)."""
    value = body.get(key, _MISSING)
    name = f"{where}{key}"
    if value is _MISSING or value is None:
        raise bad_request(f"missing required field '{name}'", code="MISSING_FIELD")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise bad_request(
            f"field '{name}' must be {kind.__name__}, got {type(value).__name__}",
            code="INVALID_FIELD",
        )
    return value


def optional(body: dict[str, Any], key: str, kind: type[T], default: T, *, where: str = "") -> T:
    if body.get(key) is None:
        return default
    return field(body, key, kind, where=where)


def positive(value: T, name: str) -> T:
    if isinstance(value, int | float) and value <= 0:
        raise bad_request(f"field '{name}' must be > 0, got {value}", code="INVALID_FIELD")
    return value


def non_empty(value: str, name: str) -> str:
    if not value.strip():
        raise bad_request(f"field '{name}' must not be empty", code="INVALID_FIELD")
    return value
