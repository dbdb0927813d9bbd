"""HTTP API plumbing without azure.functions: error envelope, body limits, JSON validation."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any


@dataclass
class ApiError(Exception):
    """An error answered as `{"error": {"code", "message"}}` with an HTTP status."""

    status: int
    code: str
    message: str

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


def bad_request(message: str, code: str = "BadRequest") -> ApiError:
    return ApiError(400, code, message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "NotFound", message)


def conflict(message: str) -> ApiError:
    return ApiError(409, "Conflict", message)


def parse_json_body(body: bytes, max_bytes: int) -> Any:
    """Parse a request body, refusing oversized and malformed ones before doing anything."""
    if len(body) > max_bytes:
        raise ApiError(413, "PayloadTooLarge", f"request body exceeds {max_bytes} bytes")
    if not body.strip():
        raise bad_request("request body is empty; expected JSON", "InvalidJson")
    try:
        value = json.loads(body, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise bad_request("request body is nested too deeply", "InvalidJson") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"request body is not valid JSON: {exc}", "InvalidJson") from None
    try:
        # JSON escapes may spell lone surrogates, which no storage call can encode later.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request("request body holds a lone surrogate (not valid Unicode)",
                          "InvalidJson") from None
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


_PATH = re.compile(r"(?<![\w.-])(?:[A-Za-z]:)?(?:[\\/][^\s'\"\\/:]+){2,}[\\/]?")


def public_reason(text: Any, limit: int = 500) -> str:
    """A failure as callers may see it: its first line, no traceback, no server paths
    (the full text belongs in the app's log)."""
    raw = str(text or "")
    first = raw.split("Traceback (most recent call last)", 1)[0].strip().splitlines()
    line = first[0].strip() if first else ""
    return _PATH.sub("<path>", line)[:limit]


def require_object(value: Any, what: str = "request body") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad_request(f"{what} must be a JSON object")
    return value


def field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], *,
          required: bool = True, default: Any = None) -> Any:
    """Read one typed field; bool is not accepted where an int is expected."""
    if name not in obj or obj[name] is None:
        if required:
            raise bad_request(f"field '{name}' is required")
        return default
    value = obj[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise bad_request(f"field '{name}' has the wrong type")
    if not isinstance(value, kinds):
        raise bad_request(f"field '{name}' has the wrong type")
    return value


@dataclass(frozen=True)
class BodyField:
    """One field of a JSON request body: what the handler reads, and what the OpenAPI document
    says about it (`tools/make_openapi.py` builds the schema from these)."""

    name: str
    kind: type | tuple[type, ...]
    required: bool = False
    default: Any = None
    nullable: bool = False          # null is accepted and means "not given"
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    exclusive_maximum: bool = False

    def in_range(self, value: float) -> bool:
        """Within the bounds; NaN never is (it compares false)."""
        if self.minimum is not None and not value >= self.minimum:
            return False
        if self.maximum is None:
            return True
        return value < self.maximum if self.exclusive_maximum else value <= self.maximum


def read_body(data: dict[str, Any], spec: tuple[BodyField, ...]) -> dict[str, Any]:
    """Every field of `spec`, typed and checked, with its default where it is not given."""
    values: dict[str, Any] = {}
    for f in spec:
        value = field(data, f.name, f.kind, required=f.required, default=f.default)
        if f.choices and value not in f.choices:
            raise bad_request(f"field '{f.name}' must be "
                              + " or ".join(f"'{choice}'" for choice in f.choices))
        if value is not None and not f.in_range(value):
            bounds = (f"from {f.minimum} to {f.maximum}" if f.maximum is not None
                      else f"at least {f.minimum}")
            raise bad_request(f"field '{f.name}' must be a number {bounds}")
        values[f.name] = value
    return values


def choice_param(raw: str | None, name: str, choices: tuple[str, ...]) -> str | None:
    """An optional query filter that must be one of `choices`; None when not given."""
    if not raw:
        return None
    if raw not in choices:
        raise bad_request(f"query parameter '{name}' must be one of {', '.join(choices)}")
    return raw


def int_param(raw: str | None, name: str, default: int, low: int, high: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"query parameter '{name}' must be an integer") from None
    if not low <= value <= high:
        raise bad_request(f"query parameter '{name}' must be from {low} to {high}")
    return value
