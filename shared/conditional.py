"""Optimistic concurrency on table rows: one helper, one retry policy.

Every writer that may race another (scalers, agents, API calls, repeated activities) reads a
row, decides, and writes with the row's ETag (`IfNotModified`). A write that loses the race
raises `ResourceModifiedError`; the whole read-decide-write is then tried again on fresh data,
after a short jittered pause so racing writers spread out, and gives up after a bounded number
of attempts with the caller's own error.
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError
from azure.data.tables import TableClient, UpdateMode

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 40        # read-decide-write rounds before giving up on contention
    base_s: float = 0.005     # first pause; doubles each round ...
    cap_s: float = 0.15       # ... up to this, and a random part of it is slept

    def pause(self, attempt: int) -> None:
        time.sleep(random.uniform(0, min(self.cap_s, self.base_s * 2 ** attempt)))


CONTENTION = RetryPolicy()


class LookAgain(Exception):
    """Raised inside an attempt when the row moved in a way that needs a fresh read."""


def retry_on_conflict(attempt: Callable[[], T], gave_up: Callable[[], Exception],
                      policy: RetryPolicy = CONTENTION) -> T:
    """Run `attempt` until it returns; a lost race (`ResourceModifiedError`, `LookAgain`)
    runs it again after a pause, at most `policy.attempts` times, then raises `gave_up()`."""
    for number in range(policy.attempts):
        try:
            return attempt()
        except (ResourceModifiedError, LookAgain):
            policy.pause(number)
    raise gave_up()


def update_if_unchanged(table: TableClient, entity: dict[str, Any], etag: str,
                        mode: UpdateMode = UpdateMode.MERGE) -> dict[str, Any]:
    """Write `entity` only if the row still has `etag`; `ResourceModifiedError` if not."""
    return table.update_entity(entity, mode=mode, etag=etag,
                               match_condition=MatchConditions.IfNotModified)


def delete_if_unchanged(table: TableClient, partition: str, row: str, etag: str) -> None:
    """Delete the row only if it still has `etag`; `ResourceModifiedError` if not."""
    table.delete_entity(partition, row, etag=etag, match_condition=MatchConditions.IfNotModified)
