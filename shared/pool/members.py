"""Pool membership from the `POOL_VMS` setting: `vm01..vm10`, `a,b,c`, or both mixed.

Ranges keep their zero padding (`vm01..vm10` gives `vm01`, ..., `vm10`), because VM names in
Azure are fixed strings and `vm1` is not `vm01`. A malformed spec fails with a `SettingError`
naming `POOL_VMS`, so a typo in configuration stops the app at start-up instead of silently
producing an empty or enormous pool.
"""
from __future__ import annotations

import re

from shared.contracts import InvalidVmName, is_valid_vm_name, validate_vm_name
from shared.settings import SettingError

__all__ = ["InvalidVmName", "is_valid_vm_name", "parse_pool_vms", "validate_vm_name"]

SETTING = "POOL_VMS"
MAX_RANGE = 1000
MAX_MEMBERS = 1000

_RANGE_RE = re.compile(r"^(?P<a>.*?)(?P<an>\d+)\s*\.\.\s*(?P<b>.*?)(?P<bn>\d+)$")


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
