"""The event log (`tbllog`): what happened, newest first, for people and audits.

PartitionKey is the UTC day, RowKey an inverted timestamp plus a random suffix, so a day's
events read newest first without sorting and concurrent writers never collide. Events one
step records together (a batch) go in one entity-group transaction per day.
"""
from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from azure.data.tables import TableClient

from shared import telemetry
from shared.clock import utcnow

_MAX_TICKS = 10**19


def _row(kind: str, message: str, job_id: str, vm: str, run_id: str,
         data: dict[str, Any] | None, now: datetime | None) -> dict[str, Any]:
    moment = now or utcnow()
    ticks = int(moment.timestamp() * 1_000_000)
    return {"PartitionKey": moment.strftime("%Y%m%d"),
            "RowKey": f"{_MAX_TICKS - ticks:019d}-{uuid.uuid4().hex[:8]}", "kind": kind,
            "message": message[:4000], "jobId": job_id, "vm": vm, "runId": run_id,
            "data": json.dumps(data or {})[:30000], "at": moment}


def _telemetry(row: dict[str, Any], data: dict[str, Any] | None) -> None:
    # The same event as a structured log record, for Application Insights and KQL.
    telemetry.event(row["kind"], row["message"], job_id=row["jobId"], vm=row["vm"],
                    run_id=row["runId"], data=data)


class EventBatch:
    """Events collected by `EventLog.batch()`, written together when the block ends."""

    def __init__(self) -> None:
        self.rows: list[tuple[dict[str, Any], dict[str, Any] | None]] = []

    def write(self, kind: str, message: str, *, job_id: str = "", vm: str = "",
              run_id: str = "", data: dict[str, Any] | None = None,
              now: datetime | None = None) -> str:
        row = _row(kind, message, job_id, vm, run_id, data, now)
        self.rows.append((row, data))
        return row["RowKey"]


class EventLog:
    def __init__(self, table: TableClient) -> None:
        self.table = table

    def write(self, kind: str, message: str, *, job_id: str = "", vm: str = "",
              run_id: str = "", data: dict[str, Any] | None = None,
              now: datetime | None = None) -> str:
        row = _row(kind, message, job_id, vm, run_id, data, now)
        self.table.create_entity(row)
        _telemetry(row, data)
        return row["RowKey"]

    @contextmanager
    def batch(self) -> Iterator[EventBatch]:
        """Events written inside the block are stored when it ends, one request per day they
        fall on (the block's own failure still stores those written before it)."""
        events = EventBatch()
        try:
            yield events
        finally:
            failing = sys.exc_info()[0] is not None
            try:
                self._flush(events)
            except Exception:
                if not failing:
                    raise  # otherwise the block's own error is the one to report

    def _flush(self, events: EventBatch) -> None:
        by_day: dict[str, list[dict[str, Any]]] = {}
        for row, _data in events.rows:
            by_day.setdefault(row["PartitionKey"], []).append(row)
        for rows in by_day.values():
            if len(rows) == 1:
                self.table.create_entity(rows[0])
            else:  # keys are unique (random suffix): a transaction cannot collide
                self.table.submit_transaction([("create", row) for row in rows])
        for row, data in events.rows:
            _telemetry(row, data)
        events.rows.clear()

    def times(self, kind: str, since: datetime, now: datetime | None = None) -> list[float]:
        """Epoch seconds of `kind` events since `since`."""
        return [at for _key, at in self.keyed_times(kind, since, now)]

    def keyed_times(self, kind: str, since: datetime, now: datetime | None = None
                    ) -> list[tuple[str, float]]:
        """(RowKey, epoch seconds) of `kind` events since `since`: a key-range read of the
        days' partitions (RowKeys invert time, so recent events are a prefix of each)."""
        now = now or utcnow()
        bound = f"{_MAX_TICKS - int(since.timestamp() * 1_000_000):019d}"
        days = sorted({since.strftime("%Y%m%d"), now.strftime("%Y%m%d")})
        out: list[tuple[str, float]] = []
        for partition in days:
            rows = self.table.query_entities(
                "PartitionKey eq @p and RowKey le @bound and kind eq @k",
                parameters={"p": partition, "bound": bound, "k": kind},
                select=["RowKey", "at"])
            out.extend((row["RowKey"], row["at"].timestamp()) for row in rows)
        return out


    def day(self, day: datetime | None = None, kind: str | None = None,
            limit: int = 200) -> list[dict[str, Any]]:
        partition = (day or utcnow()).strftime("%Y%m%d")
        query = "PartitionKey eq @p" + (" and kind eq @k" if kind else "")
        rows = self.table.query_entities(query, parameters={"p": partition, "k": kind or ""})
        out = []
        for row in rows:
            out.append({"kind": row["kind"], "message": row["message"], "jobId": row["jobId"],
                        "vm": row["vm"], "runId": row["runId"], "data": json.loads(row["data"]),
                        "at": row["at"].isoformat()})
            if len(out) >= limit:
                break
        return out


class RecentTimes:
    """Times of one kind of event over a sliding window, read incrementally.

    The scaler wants the arrival rate of work on every pass; reading the whole window each time
    costs in proportion to how busy it is (3,000 events in ten minutes made a pass's read 29
    times a point read). This asks the log only for what was written since the previous call,
    with a margin for writers whose clocks run a little behind, and keeps the window in memory,
    so a pass costs one small read however many events the window holds.
    """

    MARGIN_S = 10.0

    def __init__(self, log: EventLog, kind: str, window_s: float) -> None:
        self.log, self.kind, self.window_s = log, kind, window_s
        self._seen: dict[str, float] = {}  # RowKey → epoch seconds, within the window
        self._read_to: float | None = None

    def __call__(self, now: float) -> list[float]:
        start = now - self.window_s
        if self._read_to is not None:
            start = max(start, self._read_to - self.MARGIN_S)
        for key, at in self.log.keyed_times(self.kind, datetime.fromtimestamp(start, timezone.utc),
                                            datetime.fromtimestamp(now, timezone.utc)):
            self._seen[key] = at
        self._read_to = now
        cutoff = now - self.window_s
        self._seen = {key: at for key, at in self._seen.items() if at > cutoff}
        return list(self._seen.values())
