"""Local file names and output blob names derived safely from untrusted blob names.

A blob name comes from whoever dropped the file: it may hold `../`, a leading `/`, backslashes,
NUL, control characters or thousands of Unicode characters. None of it may choose where a file
lands on the VM, so local names are a hash of the blob name plus a short sanitized suffix (kept
only so a human or an action can still see the extension), checked against the resolved work
folder. Output blob names keep the original name as their prefix, so they must not carry dot
segments that a URL would collapse into another container.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_SUFFIX = 48
MAX_BLOB_NAME = 1024  # Azure's limit on a blob name, in characters


class UnsafeNameError(ValueError):
    """A name cannot be used (it would escape its folder or container)."""


def local_name(blob_name: str, prefix: str) -> str:
    """`{prefix}-{hash}-{suffix}`: unique per blob name, only [A-Za-z0-9._-], short."""
    digest = hashlib.sha256(blob_name.encode("utf-8", "surrogatepass")).hexdigest()[:20]
    last = re.split(r"[/\\]", blob_name)[-1]
    ascii_last = unicodedata.normalize("NFKD", last).encode("ascii", "ignore").decode()
    suffix = _UNSAFE.sub("_", ascii_last).strip("._-")[-MAX_SUFFIX:].lstrip("._-")
    return f"{prefix}-{digest}" + (f"-{suffix}" if suffix else "")


def contained(folder: Path, name: str) -> Path:
    """`folder / name`, refused unless it resolves to a direct child of the resolved folder."""
    if not name or "\x00" in name or "/" in name or "\\" in name or name in (".", ".."):
        raise UnsafeNameError(f"not a plain file name: {name!r}")
    base = folder.resolve()
    path = (base / name).resolve()
    if path.parent != base:
        raise UnsafeNameError(f"{name!r} resolves outside {base}")
    return path


def output_blob_name(blob_name: str, action: str) -> str:
    """`x.json` + `process` -> `x.json.process.out`, keeping sub-folders of the blob name."""
    if any(ord(c) < 32 or ord(c) == 127 for c in blob_name):
        raise UnsafeNameError("blob name holds control characters")
    segments = blob_name.replace("\\", "/").split("/")
    if any(s in (".", "..") for s in segments):
        raise UnsafeNameError("blob name holds '.' or '..' segments")
    if not blob_name.strip("/. "):
        raise UnsafeNameError("blob name is empty")
    name = f"{blob_name}.{action}.out"
    if len(name) > MAX_BLOB_NAME:
        raise UnsafeNameError(f"output name would exceed {MAX_BLOB_NAME} characters")
    return name
