"""Job rows (`tblresult`): one row per file going through the pipeline, written idempotently.

Durable activities run at least once, so every write here tolerates a repeat: recording a job
as queued twice, or its result twice, leaves one row with one outcome. A finished job never
goes back to running.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from shared.clock import utcnow
from shared.conditional import retry_on_conflict, update_if_unchanged
from shared.contracts import (
    CANCELLED,
    JOB_FINISHED,
    JOB_RETRYABLE,
    JOB_STATUSES,
    QUEUED,
    RUNNING,
)
from shared.paging import SortKey, equals_filter, page

STATUSES = JOB_STATUSES
FINISHED = JOB_FINISHED
RETRYABLE = JOB_RETRYABLE
ROW = "job"


class JobFinished(ValueError):
    """The job has already reached a final state; it cannot be cancelled."""

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(f"job {job_id!r} is already {status}")
        self.status = status


class JobNotFound(KeyError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id!r} not found")
        self.job_id = job_id


@dataclass
class Job:
    job_id: str
    instance_id: str
    container: str
    blob: str
    status: str
    run_id: str = ""
    actions: str = ""
    step: int = 0
    attempts: int = 0
    vm: str = ""
    bytes_in: int = 0
    bytes_out: int = 0
    output: str = ""
    error: str = ""
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: int = 0
    cancelled_by: str = ""
    cancel_reason: str = ""
    retry_of: str = ""
    retried_by: str = ""
    source_etag: str = ""  # the original's version the job was started for, when known
    etag: str = field(default="", repr=False)

    _MAP = {"job_id": "PartitionKey", "instance_id": "instanceId", "container": "container",
            "blob": "blob", "status": "status", "run_id": "runId", "actions": "actions",
            "step": "step", "attempts": "attempts", "vm": "vm", "bytes_in": "bytesIn",
            "bytes_out": "bytesOut", "output": "output", "error": "error",
            "created_at": "createdAt", "started_at": "startedAt", "finished_at": "finishedAt",
            "duration_ms": "durationMs", "cancelled_by": "cancelledBy",
            "cancel_reason": "cancelReason", "retry_of": "retryOf", "retried_by": "retriedBy",
            "source_etag": "sourceEtag"}

    def merged(self, values: dict[str, Any], etag: str) -> Job:
        """This row after a merge of `values` (table columns) that returned `etag`: what a
        read would give, without the read."""
        attrs = {attr: values[col] for attr, col in self._MAP.items() if col in values}
        job = replace(self, **attrs)
        job.etag = etag
        return job

    @classmethod
    def from_entity(cls, entity: Any) -> Job:
        values = {attr: entity.get(col) for attr, col in cls._MAP.items() if col in entity}
        job = cls(**{k: v for k, v in values.items() if v is not None})
        job.etag = entity.metadata.get("etag", "")
        return job

    def to_api(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {"jobId": self.job_id, "instanceId": self.instance_id,
                "blob": f"{self.container}/{self.blob}", "status": self.status,
                "runId": self.run_id or None, "actions": self.actions.split(",")
                if self.actions else [], "step": self.step, "attempts": self.attempts,
                "vm": self.vm or None, "bytesIn": self.bytes_in, "bytesOut": self.bytes_out,
                "output": self.output or None, "error": self.error or None,
                "createdAt": iso(self.created_at), "startedAt": iso(self.started_at),
                "finishedAt": iso(self.finished_at), "durationMs": self.duration_ms,
                "cancelled": {"by": self.cancelled_by, "at": iso(self.finished_at),
                              "reason": self.cancel_reason or None}
                if self.status == CANCELLED else None,
                "retryOf": self.retry_of or None, "retriedBy": self.retried_by or None}


class JobStore:
    """Reads and idempotent writes of job rows."""

    def __init__(self, table: TableClient) -> None:
        self.table = table

    def get(self, job_id: str) -> Job:
        try:
            return Job.from_entity(self.table.get_entity(job_id, ROW))
        except ResourceNotFoundError:
            raise JobNotFound(job_id) from None

    def find(self, job_id: str) -> Job | None:
        try:
            return self.get(job_id)
        except JobNotFound:
            return None

    def record_queued(self, job_id: str, instance_id: str, container: str, blob: str,
                      actions: tuple[str, ...], run_id: str = "",
                      now: datetime | None = None, retry_of: str = "",
                      source_etag: str = "") -> Job:
        """Create the job row; a second call returns the existing row unchanged."""
        return self.create(job_id, instance_id, container, blob, actions, run_id, now=now,
                           retry_of=retry_of, source_etag=source_etag)[0]

    def create(self, job_id: str, instance_id: str, container: str, blob: str,
               actions: tuple[str, ...], run_id: str = "", *, now: datetime | None = None,
               retry_of: str = "", source_etag: str = "",
               first_attempt: tuple[int, int] | None = None) -> tuple[Job, bool]:
        """Create the job row, queued, or with `first_attempt` (step, attempt) already running
        it (one write where a create and `record_attempt` would make two); returns the row
        and whether this call created it (a repeat gets the existing row unchanged)."""
        stamp = now or utcnow()
        entity = {"PartitionKey": job_id, "RowKey": ROW, "instanceId": instance_id,
                  "container": container, "blob": blob, "status": QUEUED, "runId": run_id,
                  "actions": ",".join(actions), "step": 0, "attempts": 0,
                  "createdAt": stamp, "bytesIn": 0, "bytesOut": 0,
                  "retryOf": retry_of, "sourceEtag": source_etag}
        if first_attempt is not None:
            entity.update({"status": RUNNING, "step": first_attempt[0],
                           "attempts": first_attempt[1], "startedAt": stamp})
        try:
            meta = self.table.create_entity(entity)
        except ResourceExistsError:
            return self.get(job_id), False
        return Job(job_id=job_id, instance_id=instance_id, container=container, blob=blob,
                   status=QUEUED).merged(entity, meta.get("etag", "")), True

    def _update(self, job_id: str, changes: dict[str, Any] | Callable[[Job], dict[str, Any]],
                allowed_from: tuple[str, ...] = (QUEUED, RUNNING), refuse: bool = False,
                read: Job | None = None) -> Job:
        """ETag-guarded merge of `changes` (or of what they compute from the row), made only
        while the job is in `allowed_from`; otherwise the row is returned unchanged, or
        `JobFinished` raised when `refuse`. `read` is the row as the caller just read it (the
        first attempt uses it; a lost race reads again); the row returned is built from the
        merge's ETag rather than read back."""
        held = [read]

        def attempt() -> Job:
            job = held.pop() if held and held[0] is not None else self.get(job_id)
            held.clear()
            if job.status not in allowed_from:
                if refuse:
                    raise JobFinished(job_id, job.status)
                return job
            values = changes(job) if callable(changes) else changes
            meta = update_if_unchanged(
                self.table, {"PartitionKey": job_id, "RowKey": ROW, **values}, job.etag)
            return job.merged(values, meta["etag"])

        return retry_on_conflict(
            attempt, lambda: RuntimeError(f"job {job_id}: too much write contention"))

    def cancel(self, job_id: str, by: str, reason: str = "",
               now: datetime | None = None) -> Job:
        """Queued or running -> cancelled, with who and when; `JobFinished` otherwise."""
        def cancelled(job: Job) -> dict[str, Any]:
            finished = now or utcnow()
            started = job.started_at or job.created_at or finished
            return {"status": CANCELLED, "finishedAt": finished, "cancelledBy": by[:200],
                    "cancelReason": reason[:500], "error": f"cancelled by {by[:200]}",
                    "durationMs": int((finished - started).total_seconds() * 1000)}

        return self._update(job_id, cancelled, refuse=True)

    def note_retry(self, job_id: str, retry_id: str) -> None:
        """Link a failed or cancelled job to the job that runs it again."""
        self.table.update_entity({"PartitionKey": job_id, "RowKey": ROW, "retriedBy": retry_id},
                                 mode=UpdateMode.MERGE)

    def record_attempt(self, job_id: str, step: int, attempt: int,
                       now: datetime | None = None, read: Job | None = None) -> Job:
        """A work item for (step, attempt) was issued; ignored once the job is finished."""
        def changes(job: Job) -> dict[str, Any]:
            out: dict[str, Any] = {"status": RUNNING, "step": step,
                                   "attempts": max(job.attempts, attempt)}
            if job.started_at is None:
                out["startedAt"] = now or utcnow()
            return out

        return self._update(job_id, changes, read=read or self.get(job_id))

    def record_finished(self, job_id: str, status: str, *, vm: str = "", bytes_in: int = 0,
                        bytes_out: int = 0, output: str = "", error: str = "",
                        now: datetime | None = None, read: Job | None = None) -> Job:
        """Record the outcome once; a repeat returns the first outcome unchanged. `read` is
        the row as the caller last read it, if it has not changed since."""
        if status not in FINISHED:
            raise ValueError(f"not a final status: {status}")
        job = read or self.get(job_id)
        if job.status in FINISHED:
            return job
        finished = now or utcnow()
        started = job.started_at or job.created_at or finished
        changes = {"status": status, "finishedAt": finished, "error": error[:32000],
                   "durationMs": int((finished - started).total_seconds() * 1000)}
        if vm:
            changes["vm"] = vm
        if output:
            changes["output"] = output
        if bytes_in:
            changes["bytesIn"] = bytes_in
        if bytes_out:
            changes["bytesOut"] = bytes_out
        return self._update(job_id, changes, read=job)

    def list(self, status: str | None = None, run_id: str | None = None,
             limit: int = 100) -> list[Job]:
        """Newest first. Filters are validated by the caller; values are quoted here."""
        return self.page(status=status, run_id=run_id, limit=limit)[0]

    def page(self, status: str | None = None, run_id: str | None = None, limit: int = 100,
             after: SortKey | None = None) -> tuple[list[Job], str | None]:
        """A page of jobs, newest first, after the continuation key `after`."""
        clauses, params = equals_filter(ROW, status=status, runId=run_id)
        if after is not None:
            try:
                params["before"] = datetime.fromisoformat(after[0])
                clauses.append("createdAt le @before")  # the rest is sorted out in `page`
            except ValueError:
                pass
        rows = self.table.query_entities(" and ".join(clauses), parameters=params)
        return page((Job.from_entity(row) for row in rows), _job_key, limit, after)


def _job_key(job: Job) -> SortKey:
    created = job.created_at or datetime.min.replace(tzinfo=timezone.utc)
    return created.isoformat(), job.job_id
