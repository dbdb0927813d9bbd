"""The Bicep templates in infra/, parsed by pycep-parser (the parser checkov uses).

The Bicep compiler cannot be installed here (it downloads a binary), so the consistency checks
that need no type system work on pycep's JSON tree: parameter files against `param`
declarations, module calls against the modules' parameters and outputs, and app settings
against the settings the code reads. Comments are gone from the tree, so nothing commented out
counts. pycep writes literals and identifiers alike as strings, string interpolation as the
text with its `${...}`, and other expressions as `{"operator"|"function": ...}` nodes.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from lark.exceptions import LarkError
from pycep import BicepParser


class BicepReadError(ValueError):
    """The text is not Bicep pycep can parse, or lacks what was asked for."""


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    has_default: bool
    default: Any = None

    @property
    def required(self) -> bool:
        return not self.has_default


@dataclass(frozen=True)
class ModuleCall:
    symbol: str
    path: str
    params: frozenset[str]


@cache
def _parser() -> BicepParser:
    return BicepParser()


def parse(text: str) -> dict[str, Any]:
    try:
        return _parser().parse(text=text)
    except LarkError as exc:
        raise BicepReadError(f"not parseable as Bicep: {exc}") from None


@cache
def load(path: Path) -> dict[str, Any]:
    """The parsed template at `path` (parsed once per process)."""
    return parse(Path(path).read_text())


def parameters(tree: dict[str, Any]) -> dict[str, Param]:
    return {name: Param(name, body["type"], body.get("default") is not None, body.get("default"))
            for name, body in tree.get("parameters", {}).items()}


def outputs(tree: dict[str, Any]) -> set[str]:
    return set(tree.get("outputs", {}))


def _unquote(key: str) -> str:
    return key[1:-1] if len(key) >= 2 and key[0] == key[-1] == "'" else key


def module_calls(tree: dict[str, Any]) -> list[ModuleCall]:
    calls = []
    for symbol, body in tree.get("modules", {}).items():
        config = body["config"]
        while "params" not in config and isinstance(config.get("config"), dict):
            config = config["config"]  # `= if (...) {...}` and loops nest the body once more
        params = frozenset(_unquote(k) for k in config.get("params") or {})
        calls.append(ModuleCall(symbol, body["detail"]["path"], params))
    return calls


def variable(tree: dict[str, Any], name: str) -> Any:
    try:
        return tree["variables"][name]["value"]
    except KeyError:
        raise BicepReadError(f"no variable {name!r}") from None


def object_literal(tree: dict[str, Any], name: str) -> dict[str, Any]:
    """The object variable `name`, or the first object of its `union(...)`."""
    value = variable(tree, name)
    if isinstance(value, dict) and "function" in value:
        args = value["function"].get("parameters") or {}
        value = next((a for a in args.values() if isinstance(a, dict)), None)
    if not isinstance(value, dict):
        raise BicepReadError(f"variable {name!r} is not an object literal")
    return {_unquote(k): v for k, v in value.items()}


def object_literal_keys(tree: dict[str, Any], name: str) -> list[str]:
    return list(object_literal(tree, name))


def expression(text: str) -> Any:
    """How pycep writes the Bicep expression `text`, to compare a template's value with."""
    return variable(parse(f"var probe = {text}\n"), "probe")


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _dotted(node: Any) -> str | None:
    """`a.b.c` for a chain of property accessors over names, else None."""
    if isinstance(node, str):
        return node
    operator = node.get("operator") if isinstance(node, dict) else None
    # An object may have a property named `operator` itself (alert criteria do): not an accessor.
    if not isinstance(operator, dict) or operator.get("type") != "property_accessor":
        return None
    left, right = (_dotted(operator["operands"].get(k)) for k in ("operand_1", "operand_2"))
    return f"{left}.{right}" if left and right else None


def references(tree: dict[str, Any]) -> set[str]:
    """Every dotted name the template uses (`storage.outputs.name`), in expressions and in
    string interpolations."""
    found: set[str] = set()
    for node in _walk(tree):
        if isinstance(node, str):
            found.update(re.findall(r"[A-Za-z_][\w.]*", " ".join(
                re.findall(r"\$\{([^}]*)\}", node))))
        elif isinstance(node, dict) and "operator" in node:
            dotted = _dotted(node)
            if dotted:
                found.add(dotted)
    return found


def strings(tree: dict[str, Any]) -> list[str]:
    """Every string in the tree: literals, identifiers and interpolated text."""
    return [node for node in _walk(tree) if isinstance(node, str)]


def values_of(tree: dict[str, Any], key: str) -> list[Any]:
    """The value of every property named `key`, anywhere in the tree."""
    return [node[key] for node in _walk(tree) if isinstance(node, dict) and key in node]
