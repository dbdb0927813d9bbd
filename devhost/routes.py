"""HTTP route templates as the Functions host reads them (ASP.NET routing syntax).

Supports literal segments, `{name}`, constraints (`{id:int}`, `{id:guid}`, `{x:alpha}`,
`{n:min(1)}`, `{s:length(2,8)}`, `{v:regex(^a+$)}`, ...), optional `{x?}`, defaults
`{x=1}` and a catch-all `{*path}` as the last segment. Literals match case-insensitively.
"""
from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Generic, TypeVar
from urllib.parse import unquote

from devhost.errors import RouteTemplateError

T = TypeVar("T")
_PARAM = re.compile(r"\{([^{}]*(?:\([^)]*\))?[^{}]*)\}")
_PARAM_BODY = re.compile(
    r"^(?P<star>\*{1,2})?(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"(?P<constraints>(?::[A-Za-z]+(?:\([^)]*\))?)*)"
    r"(?P<optional>\?)?(?:=(?P<default>[^{}]*))?$")
_CONSTRAINT = re.compile(r":([A-Za-z]+)(?:\(([^)]*)\))?")


def _is_int(value: str, low: int, high: int) -> bool:
    try:
        number = int(value)
    except ValueError:
        return False
    return low <= number <= high and re.fullmatch(r"-?\d+", value) is not None


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return value.strip().lower() not in ("nan", "inf", "-inf", "infinity", "-infinity")


def _is_decimal(value: str) -> bool:
    try:
        Decimal(value)
    except InvalidOperation:
        return False
    return _is_float(value)


def _is_guid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _is_datetime(value: str) -> bool:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _args(raw: str | None, count: int, name: str) -> list[int]:
    parts = [p.strip() for p in (raw or "").split(",")] if raw else []
    if len(parts) != count or not all(re.fullmatch(r"-?\d+", p) for p in parts):
        raise RouteTemplateError(f"constraint {name} needs {count} integer argument(s)")
    return [int(p) for p in parts]


def _constraint(name: str, raw: str | None) -> Callable[[str], bool]:
    """The check for one constraint; unknown constraints are a RouteTemplateError."""
    key = name.lower()
    simple: dict[str, Callable[[str], bool]] = {
        "int": lambda v: _is_int(v, -(2**31), 2**31 - 1),
        "long": lambda v: _is_int(v, -(2**63), 2**63 - 1),
        "bool": lambda v: v.lower() in ("true", "false"),
        "guid": _is_guid,
        "alpha": lambda v: re.fullmatch(r"[A-Za-z]+", v) is not None,
        "double": _is_float,
        "float": _is_float,
        "decimal": _is_decimal,
        "datetime": _is_datetime,
    }
    if key in simple:
        if raw is not None:
            raise RouteTemplateError(f"constraint {name} takes no argument")
        return simple[key]
    if key == "min":
        (low,) = _args(raw, 1, name)
        return lambda v: _is_int(v, low, 2**63 - 1)
    if key == "max":
        (high,) = _args(raw, 1, name)
        return lambda v: _is_int(v, -(2**63), high)
    if key == "range":
        low, high = _args(raw, 2, name)
        return lambda v: _is_int(v, low, high)
    if key == "minlength":
        (low,) = _args(raw, 1, name)
        return lambda v: len(v) >= low
    if key == "maxlength":
        (high,) = _args(raw, 1, name)
        return lambda v: len(v) <= high
    if key == "length":
        parts = _args(raw, 2 if raw and "," in raw else 1, name)
        low, high = (parts[0], parts[0]) if len(parts) == 1 else parts
        return lambda v: low <= len(v) <= high
    if key == "regex":
        try:
            pattern = re.compile(raw or "", re.IGNORECASE)
        except re.error as exc:
            raise RouteTemplateError(f"constraint regex({raw}): {exc}") from None
        return lambda v: pattern.search(v) is not None
    raise RouteTemplateError(f"unknown route constraint {name!r}")


@dataclass
class _Param:
    name: str
    checks: list[Callable[[str], bool]]
    optional: bool
    default: str | None
    catch_all: bool


@dataclass
class RouteTemplate:
    """One compiled template; `match(path)` returns the route values or None."""

    template: str
    regex: re.Pattern[str]
    params: dict[str, _Param]
    precedence: tuple[int, ...]

    @classmethod
    def parse(cls, template: str) -> RouteTemplate:
        text = template.strip().strip("/")
        segments = text.split("/") if text else []
        pattern = ""
        params: dict[str, _Param] = {}
        precedence: list[int] = []
        for index, segment in enumerate(segments):
            if not segment:
                raise RouteTemplateError(f"route {template!r} has an empty segment")
            seg_pattern, seg_rank, optional_only = cls._segment(segment, params, template,
                                                               index == len(segments) - 1)
            precedence.append(seg_rank)
            sep = "/" if index else ""
            if optional_only:
                pattern += f"(?:{sep}{seg_pattern})?"
            else:
                pattern += sep + seg_pattern
        return cls(template, re.compile(f"^{pattern}$", re.IGNORECASE | re.DOTALL), params,
                   tuple(precedence))

    @staticmethod
    def _segment(segment: str, params: dict[str, _Param], template: str,
                 last: bool) -> tuple[str, int, bool]:
        pos = 0
        out = ""
        rank = 0
        found = list(_PARAM.finditer(segment))
        leftover = _PARAM.sub("", segment)
        if "{" in leftover or "}" in leftover:
            raise RouteTemplateError(f"route {template!r}: unbalanced braces in {segment!r}")
        optional_only = False
        for match in found:
            out += re.escape(segment[pos:match.start()])
            pos = match.end()
            body = _PARAM_BODY.match(match.group(1).strip())
            if not body:
                raise RouteTemplateError(f"route {template!r}: bad parameter {match.group(0)!r}")
            name = body.group("name")
            if name.lower() in (p.lower() for p in params):
                raise RouteTemplateError(f"route {template!r}: parameter {name!r} repeats")
            checks = [_constraint(c.group(1), c.group(2))
                      for c in _CONSTRAINT.finditer(body.group("constraints") or "")]
            catch_all = bool(body.group("star"))
            optional = bool(body.group("optional")) or body.group("default") is not None
            if catch_all and not (last and len(found) == 1 and segment == match.group(0)):
                raise RouteTemplateError(
                    f"route {template!r}: a catch-all parameter must be the whole last segment")
            if optional and segment != match.group(0):
                raise RouteTemplateError(
                    f"route {template!r}: an optional parameter must be a whole segment")
            params[name] = _Param(name, checks, optional or catch_all, body.group("default"),
                                  catch_all)
            if catch_all:
                out += f"(?P<{name}>.*)"
                rank = max(rank, 4)
                optional_only = True
            else:
                out += f"(?P<{name}>[^/]+?)"
                rank = max(rank, 3 if optional else 1 if checks else 2)
                optional_only = optional
        out += re.escape(segment[pos:])
        return out, rank, optional_only

    def match(self, path: str) -> dict[str, str] | None:
        """Route values for `path` (already without the route prefix), or None."""
        found = self.regex.match(path.strip("/"))
        if not found:
            return None
        values: dict[str, str] = {}
        for name, param in self.params.items():
            raw = found.group(name)
            if raw is None or raw == "":
                if param.default is not None:
                    values[name] = param.default
                elif not param.optional:
                    return None
                continue
            value = unquote(raw)
            if not all(check(value) for check in param.checks):
                return None
            values[name] = value
        return values


@dataclass
class RouteTable(Generic[T]):
    """Routes with their methods; finds the handler for a path and method, like ASP.NET."""

    entries: list[tuple[RouteTemplate, frozenset[str] | None, T]] = field(default_factory=list)

    def add(self, template: str, methods: Iterable[str] | None, target: T) -> RouteTemplate:
        route = RouteTemplate.parse(template)
        allowed = frozenset(m.upper() for m in methods) if methods else None
        self.entries.append((route, allowed, target))
        self.entries.sort(key=lambda e: e[0].precedence)
        return route

    def find(self, path: str, method: str) -> tuple[str, T | None, dict[str, str]]:
        """('ok', target, values), ('method', None, {}) when only the method is wrong,
        or ('missing', None, {})."""
        path_matched = False
        for route, allowed, target in self.entries:
            values = route.match(path)
            if values is None:
                continue
            if allowed is None or method.upper() in allowed:
                return "ok", target, values
            path_matched = True
        return ("method" if path_matched else "missing"), None, {}

    def allowed_methods(self, path: str) -> list[str]:
        """The methods some route accepts on `path`, for a 405's `Allow` header."""
        methods: set[str] = set()
        for route, allowed, _ in self.entries:
            if allowed and route.match(path) is not None:
                methods |= allowed
        return sorted(methods)
