"""Deterministic ids and blob names, so a trigger that fires twice starts nothing new."""
from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone

MAX_BLOB_NAME = 1024
MAX_BLOB_SEGMENTS = 254  # Azure: a blob name has at most 254 path segments
MAX_INSTANCE_ID = 120
ERROR_SUFFIX = ".error.json"
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\\]")
_INSTANCE_ID = re.compile(r"[A-Za-z0-9_-]+")


class BlobNameError(ValueError):
    """A blob name that the app refuses to handle (empty, too long, control chars, `..`)."""


class InstanceIdError(ValueError):
    """An id that no job, run or change of this app can have (it would not route or store)."""


def check_blob_name(name: str, max_length: int = MAX_BLOB_NAME) -> str:
    """Accept ordinary blob names; refuse ones that are hostile to paths or tables, or that
    storage cannot hold (lone surrogates do not encode; Azure caps length and segments)."""
    if not isinstance(name, str) or not name or len(name) > max_length:
        raise BlobNameError(f"blob name must be 1-{max_length} characters")
    if _UNSAFE.search(name):
        raise BlobNameError("blob name must not contain control characters or backslashes")
    if not encodable(name):
        raise BlobNameError("blob name must be valid Unicode (no lone surrogates)")
    parts = name.split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise BlobNameError("blob name must not be absolute or contain empty, '.' or '..' parts")
    if len(parts) > MAX_BLOB_SEGMENTS:
        raise BlobNameError(f"blob name must have at most {MAX_BLOB_SEGMENTS} segments")
    return name


def encodable(text: str) -> bool:
    """True when `text` encodes as UTF-8 (JSON may carry lone surrogates that do not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def max_source_name(actions: tuple[str, ...] | list[str]) -> int:
    """The longest original name whose derived names (each step's output, which the next
    step consumes, and the failure record) all stay within Azure's limit."""
    chained = sum(len(result_blob_name("", action)) for action in actions)
    return MAX_BLOB_NAME - max(chained, len(ERROR_SUFFIX))


def check_source_blob_name(name: str, actions: tuple[str, ...] | list[str]) -> str:
    """A name for a file to process: a valid blob name that leaves room for derived names."""
    limit = max_source_name(actions)
    if isinstance(name, str) and MAX_BLOB_NAME >= len(name) > limit:
        raise BlobNameError(f"blob name must be at most {limit} characters, so that its "
                            "output and failure names fit in 1024")
    return check_blob_name(name)


def check_prefix(prefix: str) -> str:
    """A listing prefix: empty, or the start of a name `check_blob_name` accepts."""
    if not isinstance(prefix, str) or len(prefix) > MAX_BLOB_NAME:
        raise BlobNameError(f"prefix must be at most {MAX_BLOB_NAME} characters")
    if _UNSAFE.search(prefix) or not encodable(prefix):
        raise BlobNameError("prefix must not contain control characters, backslashes or "
                            "lone surrogates")
    if prefix.startswith("/") or any(p in (".", "..") for p in prefix.split("/")[:-1]):
        raise BlobNameError("prefix must not be absolute or contain '.' or '..' parts")
    return prefix


def check_instance_id(value: str, what: str = "id") -> str:
    """Job, run and change ids: letters, digits, '-' and '_' (what the app generates), so a
    `%2F` or other escape in a URL cannot reach a table key or an instance URL."""
    if (not isinstance(value, str) or not 1 <= len(value) <= MAX_INSTANCE_ID
            or not _INSTANCE_ID.fullmatch(value)):
        raise InstanceIdError(f"{what} must be 1-{MAX_INSTANCE_ID} letters, digits, '-' or '_'")
    return value


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
    return f"{blob_name}{ERROR_SUFFIX}"

