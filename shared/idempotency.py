"""Idempotent submits: a repeated `POST` with the same key gets the first answer (`tblidem`).

A caller that timed out cannot know whether its submit started anything, so it sends the same
`Idempotency-Key` header (or `requestId` in the body) again. The first request with a key
inserts a row (a conditional insert: exactly one request per key wins, on any instance) and
stores its answer when done; a repeat with the same body gets that answer and starts nothing; a
repeat with a different body is a 409. Rows expire after the retention window, after which the
key may be used again. A request that fails (4xx, 5xx) removes its row, so nothing is kept for
work that was never started and the caller may fix its request and retry with the same key.

Row: PartitionKey = scope (`jobs`, `runs`, `changes`), RowKey = the key.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from azure.core.exceptions import (
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import TableClient, UpdateMode

from shared.api import ApiError, bad_request
from shared.clock import utcnow
from shared.conditional import (
    LookAgain,
    delete_if_unchanged,
    retry_on_conflict,
    update_if_unchanged,
)

HEADER = "Idempotency-Key"
BODY_FIELD = "requestId"
PENDING, DONE = "pending", "done"
# A pending row older than this belongs to a request that died before it finished; a repeat
# may take it over (the work it may have started is found again by its deterministic id).
PENDING_TAKEOVER = timedelta(seconds=120)
MAX_STORED_ANSWER = 30_000  # characters; a table property holds at most 64 KiB of UTF-16
_KEY_RE = re.compile(r"^[A-Za-z0-9._:~-]{1,200}$")


def request_key(headers: dict[str, str], data: dict[str, Any]) -> str | None:
    """The request's idempotency key from the header or the body, validated; None if neither."""
    lowered = {k.lower(): v for k, v in headers.items()}
    header = lowered.get(HEADER.lower())
    body = data.get(BODY_FIELD)
    if body is not None and not isinstance(body, str):
        raise bad_request(f"field '{BODY_FIELD}' must be a string", "InvalidIdempotencyKey")
    if header is not None and body is not None and header != body:
        raise bad_request(f"header {HEADER} and field '{BODY_FIELD}' differ; send one key",
                          "InvalidIdempotencyKey")
    key = header if header is not None else body
    if key is None:
        return None
    if not _KEY_RE.match(key):
        raise bad_request("idempotency key must be 1-200 letters, digits or . _ : ~ -",
                          "InvalidIdempotencyKey")
    return key


def body_fingerprint(data: dict[str, Any]) -> str:
    """SHA-256 of the body in canonical JSON, without the key itself."""
    canonical = json.dumps({k: v for k, v in data.items() if k != BODY_FIELD}, sort_keys=True,
                           separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def derived_id(scope: str, key: str, length: int = 16) -> str:
    """Hex digits from the key: the id a keyed submit gives its run or change, so a takeover
    after a crash finds the work the first request may already have started."""
    return hashlib.sha256(f"{scope}\n{key}".encode()).hexdigest()[:length]


@dataclass(frozen=True)
class Replay:
    """The stored answer of an earlier request with the same key and body."""

    status: int
    body: dict[str, Any]


@dataclass(frozen=True)
class Reservation:
    """This request owns the key; it must `complete` or `release` it."""

    scope: str
    key: str
    etag: str


class IdempotencyStore:
    def __init__(self, table: TableClient, retention: timedelta) -> None:
        self.table = table
        self.retention = retention

    def begin(self, scope: str, key: str, fingerprint: str,
              now: datetime | None = None) -> Replay | Reservation:
        """Reserve the key, or return the first answer; 409 for another body or a request
        that is still in progress."""
        now = now or utcnow()
        entity = {"PartitionKey": scope, "RowKey": key, "state": PENDING,
                  "fingerprint": fingerprint, "createdAt": now}

        def attempt() -> Replay | Reservation:
            try:
                meta = self.table.create_entity(entity)
                return Reservation(scope, key, meta.get("etag", ""))
            except ResourceExistsError:
                pass
            try:
                row = self.table.get_entity(scope, key)
            except ResourceNotFoundError:
                raise LookAgain from None  # released between the two calls
            created = row.get("createdAt") or now
            expired = now - created > self.retention
            stale = row.get("state") == PENDING and now - created > PENDING_TAKEOVER
            if not expired and row.get("fingerprint") != fingerprint:
                raise ApiError(409, "IdempotencyKeyReused",
                               f"idempotency key '{key}' was used with a different request "
                               f"body; use a new key for a new request")
            if not expired and row.get("state") == DONE:
                return Replay(int(row["status"]), json.loads(row["answer"]))
            if not expired and not stale:
                raise ApiError(409, "RequestInProgress",
                               f"a request with idempotency key '{key}' is still in progress; "
                               "retry shortly")
            try:
                meta = update_if_unchanged(self.table, entity, row.metadata["etag"],
                                           UpdateMode.REPLACE)
            except ResourceNotFoundError:
                raise LookAgain from None
            return Reservation(scope, key, meta.get("etag", ""))

        return retry_on_conflict(attempt, lambda: ApiError(
            409, "RequestInProgress", f"idempotency key '{key}' is contended; retry shortly"))

    def complete(self, reservation: Reservation, status: int, answer: dict[str, Any]) -> None:
        text = json.dumps(answer, default=str)
        if len(text) > MAX_STORED_ANSWER:
            text = json.dumps({k: v for k, v in answer.items() if k.endswith("Id")})
        update_if_unchanged(
            self.table, {"PartitionKey": reservation.scope, "RowKey": reservation.key,
                         "state": DONE, "status": status, "answer": text,
                         "completedAt": utcnow()}, reservation.etag)

    def release(self, reservation: Reservation) -> None:
        """Forget a reservation whose request failed; nothing was started under it."""
        try:
            delete_if_unchanged(self.table, reservation.scope, reservation.key, reservation.etag)
        except (ResourceModifiedError, ResourceNotFoundError):
            pass

    def purge_expired(self, now: datetime | None = None) -> int:
        """Delete rows past the retention window (housekeeping; expired rows are also simply
        overwritten by the next request with their key)."""
        cutoff = (now or utcnow()) - self.retention
        count = 0
        for row in self.table.query_entities("createdAt lt @cutoff",
                                             parameters={"cutoff": cutoff},
                                             select=["PartitionKey", "RowKey"]):
            try:
                self.table.delete_entity(row["PartitionKey"], row["RowKey"])
                count += 1
            except ResourceNotFoundError:
                pass
        return count


async def run_idempotent(store: IdempotencyStore, scope: str, headers: dict[str, str],
                         data: dict[str, Any],
                         start: Callable[[str | None], Awaitable[tuple[int, dict[str, Any]]]]
                         ) -> tuple[int, dict[str, Any], bool]:
    """Run `start(key)` once per key and body; returns (status, answer, replayed)."""
    key = request_key(headers, data)
    if key is None:
        status, answer = await start(None)
        return status, answer, False
    got = store.begin(scope, key, body_fingerprint(data))
    if isinstance(got, Replay):
        return got.status, got.body, True
    try:
        status, answer = await start(key)
    except BaseException:
        store.release(got)
        raise
    store.complete(got, status, answer)
    return status, answer, False
