"""The steps the orchestrations call as activities, as plain functions over `Services`.

Each step is idempotent, because Durable runs an activity at least once: recording a job,
issuing a work item (a duplicate message is harmless: claims stop a second run), recording the
result and moving the original can all repeat without changing the outcome.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import UpdateMode

from shared import telemetry
from shared.clock import utcnow
from shared.collectors import collect
from shared.contracts import (
    CANCELLED,
    FAILED,
    JOB_FINISHED,
    JOB_RETRYABLE,
    QUEUED,
    RUNNING,
    FileJob,
    IssuedWork,
    JobOutcome,
    RunFile,
    RunInput,
    RunSummary,
    WorkRequest,
    done_event_name,
)
from shared.eventlog import EventBatch
from shared.jobs import Job
from shared.naming import check_blob_name, failed_error_name, file_instance_id
from shared.paging import SortKey, equals_filter, page
from shared.services import Services
from shared.workitem import WorkItem


class BlobMissing(LookupError):
    """The input blob disappeared before it could be processed."""


@dataclass(frozen=True)
class FileRef:
    container: str
    name: str
    etag: str
    size: int

    @property
    def instance_id(self) -> str:
        return file_instance_id(self.container, self.name, self.etag)


def describe_blob(services: Services, container: str, name: str) -> FileRef:
    check_blob_name(name)
    try:
        props = services.blobs.get_blob_client(container, name).get_blob_properties()
    except ResourceNotFoundError:
        raise BlobMissing(f"{container}/{name} does not exist") from None
    return FileRef(container, name, props.etag.strip('"'), props.size)


def list_files(services: Services, container: str, prefix: str | None = None,
               names: list[str] | None = None, limit: int = 100_000) -> list[RunFile]:
    """Blobs a run covers: an explicit list (missing ones skipped) or everything under a prefix."""
    refs: list[FileRef] = []
    if names is not None:
        for name in names:
            try:
                refs.append(describe_blob(services, container, name))
            except BlobMissing:
                continue
    else:
        client = services.blobs.get_container_client(container)
        for blob in client.list_blobs(name_starts_with=prefix or None):
            refs.append(FileRef(container, blob.name, blob.etag.strip('"'), blob.size))
            if len(refs) >= limit:
                break
    return [{**asdict(ref), "instanceId": ref.instance_id} for ref in refs]


def collect_files(services: Services, run: RunInput) -> list[RunFile]:
    """Run the collector named by the run's `source`, then list what it wrote."""
    written = collect(run["source"], run["runId"], utcnow(), services.blobs, run["container"])
    return list_files(services, run["container"], names=[f.name for f in written])


def start_job(services: Services, job: FileJob) -> dict[str, Any]:
    return _start(services, job)[0].to_api()


def _start(services: Services, job: FileJob, first: WorkItem | None = None,
           events: EventBatch | None = None) -> tuple[Job, bool]:
    """Record the job row (with `first`, already running that item); returns it and whether
    this call created it. A job of a cancelled run is cancelled at once."""
    row, created = services.jobs.create(
        job["jobId"], job["instanceId"], job["container"], job["blob"], tuple(job["actions"]),
        job.get("runId", ""), retry_of=job.get("retryOf", ""), source_etag=job.get("etag", ""),
        first_attempt=(first.step, first.attempt) if first is not None else None)
    run_cancel = _run_cancel(services, row.run_id) if row.run_id else None
    if run_cancel is not None and row.status in (QUEUED, RUNNING):
        row = services.jobs.cancel(row.job_id, run_cancel["by"], "its run was cancelled")
    if created or row.attempts == 0:
        (events or services.log).write("job.queued", f"{job['container']}/{job['blob']} queued",
                                       job_id=job["jobId"], run_id=job.get("runId", ""))
    return row, created


def issue_work_item(services: Services, request: WorkRequest) -> IssuedWork:
    """Sign and enqueue one attempt of one step; record the attempt on the job. With
    `start` (a job's first item, from orchestration version 2.0) the job row is created
    running it, as `start_job` and `record_attempt` would in two writes; a job cancelled by
    then issues nothing.

    The item is recorded before the job row says it is running: a cancel merges the row and
    then withdraws every item it finds, so it either finds this one or its merge made the
    row's ETag stale for the write below, which then sees the cancel and sends nothing."""
    item = WorkItem(job_id=request["jobId"], instance_id=request["instanceId"],
                    step=request["step"], action=request["action"], blob=request["blob"],
                    attempt=request["attempt"]).signed(services.settings.callback_signing_key)
    services.issued.record(item)
    with services.log.batch() as events:
        if request.get("start"):
            job, created = _start(services, request["start"], item, events)
            if not created and job.status != CANCELLED:  # a repeat: the row is there already
                job = services.jobs.record_attempt(item.job_id, item.step, item.attempt,
                                                   read=job)
        else:
            job = services.jobs.record_attempt(item.job_id, item.step, item.attempt)
        if job.status == CANCELLED:
            return {"jobId": item.job_id, "cancelled": True}
        services.work_queue.send_message(item.to_json())
        events.write("work.issued", f"step {item.step} ({item.action}) attempt {item.attempt}",
                     job_id=item.job_id, data={"blob": item.blob, "step": item.step,
                                               "attempt": item.attempt, "action": item.action})
    return {"jobId": item.job_id, "step": item.step, "attempt": item.attempt,
            "eventName": done_event_name(item.step, item.attempt)}


def finish_job(services: Services, outcome: JobOutcome) -> dict[str, Any]:
    """Record the job's result, then archive or delete the original (or move it to failed/)."""
    s = services.settings
    status = outcome["status"] if outcome["status"] in JOB_FINISHED else FAILED
    job = services.jobs.get(outcome["jobId"])
    repeat = job.status in JOB_FINISHED
    if repeat:
        status = job.status  # cancelled, or a repeat of this step: the recorded outcome stands
    container, name = job.container, job.blob
    source = services.blobs.get_blob_client(container, name)
    # Move the original first: the row says finished only once nothing is left to do.
    if status in JOB_RETRYABLE:  # kept in failed/ whatever KEEP_ORIGINALS says: it may be retried
        _copy_then_delete(services, source, s.failed_container, name, job.source_etag)
        services.blobs.get_blob_client(s.failed_container, failed_error_name(name)).upload_blob(
            json.dumps({"jobId": job.job_id, "status": status,
                        "error": outcome.get("error") or job.error,
                        "attempts": job.attempts,
                        "at": utcnow().isoformat()}).encode(),
            overwrite=True)
    elif s.keep_originals:
        _copy_then_delete(services, source, s.archive_container, name, job.source_etag)
    else:
        _delete_if_exists(source, job.source_etag)
    # The row read above: if it moved since (a cancel), the ETag-guarded merge reads again.
    job = services.jobs.record_finished(
        outcome["jobId"], status, vm=outcome.get("vm") or "",
        bytes_in=int(outcome.get("bytesIn") or 0), bytes_out=int(outcome.get("bytesOut") or 0),
        output=outcome.get("output") or "", error=outcome.get("error") or "", read=job)
    if not repeat:
        telemetry.job_finished(job.actions, job.status, job.duration_ms)
    services.log.write(f"job.{status}", f"{container}/{name} {status}", job_id=job.job_id,
                       vm=job.vm, run_id=job.run_id,
                       data={"bytesIn": job.bytes_in, "bytesOut": job.bytes_out,
                             "error": job.error[:500]})
    return job.to_api()


def _copy_then_delete(services: Services, source: Any, container: str, name: str,
                      etag: str = "") -> None:
    """Copy the blob to `container` server-side and delete the original; repeat-safe.

    The copy and the delete are both conditional on the original's ETag (the version the job
    was started for, else the one there now), so a newer file uploaded under the same name
    (another job) is neither archived nor deleted here. Storage copies within the account
    without the bytes passing through this process; where it refuses (an identity without
    read rights on the source, say), the blob is streamed.
    """
    if source.container_name == container:
        return  # a retry of a job whose original is already there
    if not etag:
        try:
            etag = source.get_blob_properties().etag
        except ResourceNotFoundError:
            return  # already moved by an earlier run of this step
    target = services.blobs.get_blob_client(container, name)
    unchanged = {"etag": etag, "match_condition": MatchConditions.IfNotModified}
    try:
        _server_side_copy(source, target, etag)
    except ResourceModifiedError:
        return  # replaced by a newer upload: that file is its own job's
    except ResourceNotFoundError:
        return
    except HttpResponseError as exc:
        if exc.status_code != 403:
            raise
        try:
            stream = source.download_blob(**unchanged)
        except (ResourceNotFoundError, ResourceModifiedError):
            return
        target.upload_blob(stream.chunks(), length=stream.size, overwrite=True,
                           metadata=stream.properties.metadata)
    try:
        source.delete_blob(**unchanged)
    except (ResourceNotFoundError, ResourceModifiedError):
        pass


COPY_WAIT_S = 300.0  # a copy within one account is usually done at once; a large one may not be


def _server_side_copy(source: Any, target: Any, etag: str) -> None:
    """Copy Blob from `source` (as it was at `etag`) to `target`, waiting until it is done."""
    copy = target.start_copy_from_url(source.url, source_etag=etag,
                                      source_match_condition=MatchConditions.IfNotModified)
    status, pause = copy.get("copy_status"), 0.2
    deadline = time.monotonic() + COPY_WAIT_S
    while status == "pending":
        if time.monotonic() > deadline:
            target.abort_copy(copy["copy_id"])
            raise TimeoutError(f"copy to {target.container_name}/{target.blob_name} still "
                               f"pending after {COPY_WAIT_S:.0f} s")
        time.sleep(pause)
        pause = min(pause * 2, 5.0)
        status = target.get_blob_properties().copy.status
    if status != "success":
        raise HttpResponseError(f"copy to {target.container_name}/{target.blob_name} ended "
                                f"{status}")


def _delete_if_exists(client: Any, etag: str = "") -> None:
    """Delete the blob (only the version `etag`, when given); gone or replaced is fine."""
    condition = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
    try:
        client.delete_blob(**condition)
    except (ResourceNotFoundError, ResourceModifiedError):
        pass


def record_run(services: Services, summary: RunSummary) -> RunSummary:
    """Merge the run's summary into its row (`tblrun`): written when the run has listed its
    files (status running) and when it ends; a merge keeps fields others wrote (a cancel)."""
    entity = {"PartitionKey": summary["runId"], "RowKey": "run",
              **{k: v for k, v in summary.items() if k != "runId" and v is not None}}
    services.table(services.settings.run_table).upsert_entity(entity, mode=UpdateMode.MERGE)
    services.log.write("run.finished" if summary.get("status") != "running" else "run.progress",
                       f"run {summary['runId']}: {summary.get('succeeded', 0)} ok, "
                       f"{summary.get('failed', 0)} failed", run_id=summary["runId"],
                       data=summary)
    return summary


def _run_cancel(services: Services, run_id: str) -> dict[str, Any] | None:
    """{"by", "at"} when the run was cancelled, else None."""
    run = get_run(services, run_id)
    if not run or not run.get("cancelledAt"):
        return None
    return {"by": run.get("cancelledBy") or "api", "at": run["cancelledAt"]}


def run_state(services: Services, run_id: str) -> dict[str, Any]:
    """What a run's orchestration asks before each chunk: has it been cancelled?"""
    return {"cancelled": _run_cancel(services, run_id)}


def _run_api(row: Any) -> dict[str, Any]:
    return {"runId": row["PartitionKey"], **{k: v for k, v in row.items()
                                             if k not in ("PartitionKey", "RowKey")}}


def get_run(services: Services, run_id: str) -> dict[str, Any] | None:
    try:
        row = services.table(services.settings.run_table).get_entity(run_id, "run")
    except (ResourceNotFoundError, ValueError):
        return None
    return _run_api(row)


def list_runs(services: Services, status: str | None, limit: int,
              after: SortKey | None) -> tuple[list[dict[str, Any]], str | None]:
    """Runs newest first (by start), optionally of one status."""
    clauses, params = equals_filter("run", status=status)
    rows = services.table(services.settings.run_table).query_entities(" and ".join(clauses),
                                                                      parameters=params)
    return page((_run_api(r) for r in rows),
                lambda r: (str(r.get("startedAt") or ""), r["runId"]), limit, after)
