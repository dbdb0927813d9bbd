"""Continuation tokens for the list endpoints: keyset paging, newest first.

A page ends at some item; the token is that item's sort key (a time and an id), so the next
page is "everything older than it" whatever was added or finished meanwhile: no item is shown
twice or skipped because the list moved. The token is opaque to callers (base64url JSON).
"""
from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from shared.api import bad_request

T = TypeVar("T")
SortKey = tuple[str, str]
MAX_TOKEN_CHARS = 600


def encode_token(key: SortKey) -> str:
    raw = json.dumps(list(key), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str | None) -> SortKey | None:
    """The sort key a token stands for; 400 for anything that is not one of ours."""
    if token is None or token == "":
        return None
    if len(token) > MAX_TOKEN_CHARS:
        raise bad_request("query parameter 'continuationToken' is too long",
                          "InvalidContinuationToken")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        value = None
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, str) for v in value)):
        raise bad_request("query parameter 'continuationToken' is not a token this API issued",
                          "InvalidContinuationToken")
    return value[0], value[1]


def equals_filter(row_key: str, **equals: str | None) -> tuple[list[str], dict[str, Any]]:
    """Table query clauses for one row kind and the given column values (None = any);
    values travel as parameters, never inside the query text."""
    clauses, params = [f"RowKey eq '{row_key}'"], {}
    for i, (column, value) in enumerate(equals.items()):
        if value:
            clauses.append(f"{column} eq @v{i}")
            params[f"v{i}"] = value
    return clauses, params


def page(items: Iterable[T], key: Callable[[T], SortKey], limit: int,
         after: SortKey | None) -> tuple[list[T], str | None]:
    """One page of `items`, newest (largest key) first, starting after `after`; and the token
    of the next page (None on the last one)."""
    ordered = sorted((i for i in items if after is None or key(i) < after), key=key,
                     reverse=True)
    chunk = ordered[:limit]
    token = encode_token(key(chunk[-1])) if len(ordered) > limit else None
    return chunk, token


def list_answer(name: str, items: list[dict[str, Any]], token: str | None) -> dict[str, Any]:
    """The shape every list endpoint answers with."""
    return {name: items, "count": len(items), "continuationToken": token}
