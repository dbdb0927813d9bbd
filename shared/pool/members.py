"""Pool membership from the `POOL_VMS` setting: `vm01..vm10`, `a,b,c`, or both mixed.

Ranges keep their zero padding (`vm01..vm10` gives `vm01`, ..., `vm10`), because VM names in
Azure are fixed strings and `vm1` is not `vm01`. A malformed spec fails with a `SettingError`
naming `POOL_VMS`, so a typo in configuration stops the app at start-up instead of silently
producing an empty or enormous pool.
"""
from __future__ import annotations

import re

from shared.settings import SettingError

SETTING = "POOL_VMS"
MAX_RANGE = 1000
MAX_MEMBERS = 1000

# Azure VM names: letters, digits, '-', '_', '.'; start with a letter or digit; not ending in
# '.' or '-'. The same rule keeps names safe as table RowKeys (no '/', '\\', '#', '?', quotes).
_VM_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,62}[A-Za-z0-9_])?$")
_RANGE_RE = re.compile(r"^(?P<a>.*?)(?P<an>\d+)\s*\.\.\s*(?P<b>.*?)(?P<bn>\d+)$")


class InvalidVmName(ValueError):
    """A VM name that Azure (and the pool table) cannot hold."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"{name!r} is not a valid VM name (1-64 letters, digits, '-', '_' or '.', starting "
            "with a letter or digit and not ending in '-' or '.')")
        self.name = name


def is_valid_vm_name(name: object) -> bool:
    return isinstance(name, str) and bool(_VM_NAME_RE.match(name))


def validate_vm_name(name: object) -> str:
    """Return `name` if it is a valid VM name, else raise `InvalidVmName`."""
    if not is_valid_vm_name(name):
        raise InvalidVmName(str(name))
    return name  # type: ignore[return-value]


def _expand_range(part: str) -> list[str]:
    match = _RANGE_RE.match(part)
    if not match:
        raise SettingError(SETTING, f"{part!r} is not a range like vm01..vm10")
    prefix, start_txt = match["a"].strip(), match["an"]
    end_prefix, end_txt = match["b"].strip(), match["bn"]
    if end_prefix and end_prefix != prefix:
        raise SettingError(SETTING, f"range {part!r} mixes prefixes {prefix!r} and {end_prefix!r}")
    start, end = int(start_txt), int(end_txt)
    if end < start:
        raise SettingError(SETTING, f"range {part!r} is reversed ({start} > {end})")
    if end - start + 1 > MAX_RANGE:
        raise SettingError(SETTING, f"range {part!r} has {end - start + 1} members; at most "
                                    f"{MAX_RANGE} are allowed")
    width = len(start_txt) if start_txt.startswith("0") else 1
    return [f"{prefix}{n:0{width}d}" for n in range(start, end + 1)]


def parse_pool_vms(spec: str) -> list[str]:
    """Expand a `POOL_VMS` spec into VM names, in order, without duplicates."""
    if not isinstance(spec, str) or not spec.strip():
        raise SettingError(SETTING, "must name at least one VM (e.g. vm01..vm03 or vm01,vm02)")
    names: list[str] = []
    seen: set[str] = set()
    for raw in spec.split(","):
        part = raw.strip()
        if not part:
            raise SettingError(SETTING, f"empty entry in {spec!r}")
        expanded = _expand_range(part) if ".." in part else [part]
        for name in expanded:
            if not is_valid_vm_name(name):
                raise SettingError(SETTING, str(InvalidVmName(name)))
            if name in seen:
                continue
            seen.add(name)
            names.append(name)
            if len(names) > MAX_MEMBERS:
                raise SettingError(SETTING, f"more than {MAX_MEMBERS} VMs")
    return names
