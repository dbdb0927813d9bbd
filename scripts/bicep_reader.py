"""A small reader for the Bicep files in infra/: parameters, outputs, module calls, object keys.

The Bicep compiler cannot be installed here (it downloads a binary), so the consistency checks
that need no type system are done on the text: parameter files against `param` declarations,
module calls against the modules' parameters and outputs, and app settings against the settings
the code reads. It understands what these templates use: `//` and `/* */` comments, single-quoted
strings with `\\'` escapes and `${...}` interpolation, and `'''` multi-line strings.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_PARAM_RE = re.compile(r"^param\s+(\w+)\s+(\w+)\s*(=)?", re.MULTILINE)
_OUTPUT_RE = re.compile(r"^output\s+(\w+)\s+\w+", re.MULTILINE)
_MODULE_RE = re.compile(r"^module\s+(\w+)\s+'([^']+)'\s*=", re.MULTILINE)
_KEY_RE = re.compile(r"\s*(\w+|'[^'\n]*')\s*:")
_OPEN, _CLOSE = "{[(", "}])"


class BicepReadError(ValueError):
    """The text is not shaped as this reader expects (unbalanced braces, missing block)."""


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    has_default: bool

    @property
    def required(self) -> bool:
        return not self.has_default


@dataclass(frozen=True)
class ModuleCall:
    symbol: str
    path: str
    params: frozenset[str]


def strip_comments(text: str) -> str:
    """Blank out comments (keeping line breaks and string contents) so regexes see only code."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text.startswith("'''", i):
            end = text.find("'''", i + 3)
            end = n if end < 0 else end + 3
            out.append(text[i:end])
            i = end
        elif text[i] == "'":
            end = _string_end(text, i)
            out.append(text[i:end])
            i = end
        elif text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            i = end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append("".join(c for c in text[i:end] if c == "\n"))
            i = end
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _string_end(text: str, start: int) -> int:
    """Index after the single-quoted string starting at `start` (interpolations may nest)."""
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "'":
            return i + 1
        if text.startswith("${", i):
            i = _matching(text, i + 1) + 1
            continue
        if ch == "\n":
            raise BicepReadError(f"unterminated string at offset {start}")
        i += 1
    raise BicepReadError(f"unterminated string at offset {start}")


def _matching(text: str, open_at: int) -> int:
    """Index of the bracket closing the one at `open_at`, skipping strings."""
    depth = 0
    i = open_at
    while i < len(text):
        ch = text[i]
        if text.startswith("'''", i):
            end = text.find("'''", i + 3)
            if end < 0:
                raise BicepReadError("unterminated multi-line string")
            i = end + 3
            continue
        if ch == "'":
            i = _string_end(text, i)
            continue
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise BicepReadError(f"unbalanced bracket at offset {open_at}")


def top_level_keys(block: str) -> list[str]:
    """Keys at the top level of an object literal `{ ... }` (one key per line, as Bicep wants)."""
    block = block.strip()
    if not block.startswith("{") or _matching(block, 0) != len(block) - 1:
        raise BicepReadError("expected a single object literal")
    keys: list[str] = []
    body = block[1:-1]
    i, depth, line_start = 0, 0, True
    while i < len(body):
        ch = body[i]
        if line_start and depth == 0:
            match = _KEY_RE.match(body, i)
            if match:
                keys.append(match.group(1).strip("'"))
                i = match.end()
                line_start = False
                continue
        if ch == "'":
            i = _string_end(body, i)
            line_start = False
            continue
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
        line_start = ch == "\n"
        i += 1
    return keys


def parameters(text: str) -> dict[str, Param]:
    code = strip_comments(text)
    return {m.group(1): Param(m.group(1), m.group(2), m.group(3) is not None)
            for m in _PARAM_RE.finditer(code)}


def outputs(text: str) -> set[str]:
    return {m.group(1) for m in _OUTPUT_RE.finditer(strip_comments(text))}


def module_calls(text: str) -> list[ModuleCall]:
    """Each `module name 'path' = [if (...)] { ... params: { ... } }` with the keys it passes."""
    code = strip_comments(text)
    calls: list[ModuleCall] = []
    for match in _MODULE_RE.finditer(code):
        body_start = code.index("{", match.end())
        body = code[body_start:_matching(code, body_start) + 1]
        params_at = re.search(r"^\s*params\s*:\s*\{", body, re.MULTILINE)
        passed: list[str] = []
        if params_at:
            open_at = params_at.end() - 1
            passed = top_level_keys(body[open_at:_matching(body, open_at) + 1])
        calls.append(ModuleCall(match.group(1), match.group(2), frozenset(passed)))
    return calls


def object_literal_keys(text: str, var_name: str) -> list[str]:
    """Top-level keys of the first object literal in `var var_name = ...`."""
    code = strip_comments(text)
    match = re.search(rf"^var\s+{re.escape(var_name)}\s*=", code, re.MULTILINE)
    if not match:
        raise BicepReadError(f"no var {var_name}")
    open_at = code.index("{", match.end())
    return top_level_keys(code[open_at:_matching(code, open_at) + 1])


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")
