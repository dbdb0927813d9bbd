"""The event log (`tbllog`): what happened, newest first, for people and audits.

PartitionKey is the UTC day, RowKey an inverted timestamp plus a random suffix, so a day's
events read newest first without sorting and concurrent writers never collide.
"""
from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from azure.data.tables import TableClient

from shared import telemetry
from shared.clock import utcnow

_MAX_TICKS = 10**19


class EventLog:
    def __init__(self, table: TableClient) -> None:
        self.table = table

    def write(self, kind: str, message: str, *, job_id: str = "", vm: str = "",
              run_id: str = "", data: dict[str, Any] | None = None,
              now: datetime | None = None) -> str:
        moment = now or utcnow()
        ticks = int(moment.timestamp() * 1_000_000)
        row_key = f"{_MAX_TICKS - ticks:019d}-{uuid.uuid4().hex[:8]}"
        self.table.create_entity({
            "PartitionKey": moment.strftime("%Y%m%d"), "RowKey": row_key, "kind": kind,
            "message": message[:4000], "jobId": job_id, "vm": vm, "runId": run_id,
            "data": json.dumps(data or {})[:30000], "at": moment})
        # The same event as a structured log record, for Application Insights and KQL.
        telemetry.event(kind, message, job_id=job_id, vm=vm, run_id=run_id, data=data)
        return row_key

    def times(self, kind: str, since: datetime, now: datetime | None = None) -> list[float]:
        """Epoch seconds of `kind` events since `since`: a key-range read of one or two days'
        partitions (RowKeys invert time, so recent events are a prefix of the partition)."""
        now = now or utcnow()
        bound = f"{_MAX_TICKS - int(since.timestamp() * 1_000_000):019d}"
        days = sorted({since.strftime("%Y%m%d"), now.strftime("%Y%m%d")})
        out: list[float] = []
        for partition in days:
            rows = self.table.query_entities(
                "PartitionKey eq @p and RowKey le @bound and kind eq @k",
                parameters={"p": partition, "bound": bound, "k": kind}, select=["at"])
            out.extend(row["at"].timestamp() for row in rows)
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
