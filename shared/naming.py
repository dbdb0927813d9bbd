"""Deterministic ids and blob names, so a trigger that fires twice starts nothing new."""
from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone

MAX_BLOB_NAME = 1024
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\\]")


class BlobNameError(ValueError):
    """A blob name that the app refuses to handle (empty, too long, control chars, `..`)."""


def check_blob_name(name: str) -> str:
    """Accept ordinary blob names; refuse ones that are hostile to paths or tables."""
    if not isinstance(name, str) or not name or len(name) > MAX_BLOB_NAME:
        raise BlobNameError("blob name must be 1-1024 characters")
    if _UNSAFE.search(name):
        raise BlobNameError("blob name must not contain control characters or backslashes")
    parts = name.split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise BlobNameError("blob name must not be absolute or contain empty, '.' or '..' parts")
    return name


def file_instance_id(container: str, name: str, etag: str) -> str:
    """`process_file` instance id from blob name + ETag: the same upload maps to one id."""
    digest = hashlib.sha256(f"{container}/{name}\n{etag.strip(chr(34))}".encode()).hexdigest()
    return f"file-{digest[:40]}"


def run_instance_id(scheduled: datetime) -> str:
    """`process_run` instance id from the timer's scheduled time (to the second)."""
    moment = scheduled.astimezone(timezone.utc).replace(microsecond=0)
    return f"run-{moment.strftime('%Y%m%dT%H%M%SZ')}"


def result_blob_name(blob_name: str, action: str) -> str:
    """Outputs start with the original name: `data/x.json` → `results/x.json.process.out`."""
    return f"{blob_name}.{action}.out"


def failed_error_name(blob_name: str) -> str:
    return f"{blob_name}.error.json"

