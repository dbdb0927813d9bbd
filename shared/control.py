"""Cancel and retry: stop work that is no longer wanted, and run again what failed.

A cancel first moves the record to its final state (ETag-guarded, from queued or running only,
with who and when), then withdraws what is out there: each issued work item's claim turns
`withdrawn`, so an agent running it kills the action at its next heartbeat (or is refused at its
callback) and drops the message, an agent that receives it later drops it unread, and the
scaler no longer counts it as backlog. Last, the orchestration hears a `cancel` event and stops
waiting. A run's cancel marks the run so files not yet started end at once, and cancels the
ones in hand; its orchestration records a partial summary.

A retry starts the job again from its original, kept in `failed/` (failed or cancelled jobs)
or `archive/`; retrying a run's failed files is a new run over exactly those originals.
"""
from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timezone
from typing import Any

import azure.durable_functions as df
from azure.data.tables import UpdateMode

from shared.api import (
    ApiError,
    bad_request,
    conflict,
    field,
    not_found,
    parse_json_body,
    require_object,
)
from shared.contracts import (
    CANCEL_EVENT,
    FAILED,
    JOB_RETRYABLE,
    PROCESS_FILE,
    PROCESS_RUN,
    QUEUED,
    RUNNING,
    file_job_input,
)
from shared.durable_client import raise_event, start_once
from shared.jobs import JobFinished, JobNotFound
from shared.pipeline import BlobMissing, describe_blob, get_run
from shared.services import Services

log = logging.getLogger(__name__)
_PRINCIPAL_HEADER = "x-ms-client-principal-name"  # set by App Service authentication
_UNFINISHED = ("Pending", "Running", "ContinuedAsNew", "Suspended")


def cancel_request(body: bytes, headers: dict[str, str], max_bytes: int) -> tuple[str, str]:
    """(who, why) of a cancel: an optional body `{"reason", "requestedBy"}`; the signed-in
    principal (App Service authentication) is preferred to what the body says."""
    data = require_object(parse_json_body(body, max_bytes)) if body.strip() else {}
    reason = field(data, "reason", str, required=False, default="")
    by = field(data, "requestedBy", str, required=False, default="")
    if len(reason) > 500 or len(by) > 200:
        raise bad_request("'reason' is at most 500 and 'requestedBy' at most 200 characters")
    principal = {k.lower(): v for k, v in headers.items()}.get(_PRINCIPAL_HEADER, "")
    return (principal or by or "api")[:200], reason


async def _raise(client: df.DurableOrchestrationClient, instance_id: str, name: str,
                 data: Any) -> bool:
    """Raise an event; False when the instance is gone or finished (nothing left to stop)."""
    try:
        await raise_event(client, instance_id, name, data)
        return True
    except ApiError as exc:
        if exc.status in (404, 410):
            return False
        raise


def withdraw_job_work(services: Services, job_id: str) -> list[str]:
    """Withdraw every issued item of the job; returns the attempts an agent was running."""
    running = []
    for step_key in services.issued.step_keys(job_id):
        if services.claims.withdraw(job_id, step_key) == "claimed":
            running.append(step_key)
    return running


async def cancel_job(services: Services, client: df.DurableOrchestrationClient, job_id: str,
                     by: str, reason: str) -> dict[str, Any]:
    try:
        job = services.jobs.cancel(job_id, by, reason)
    except JobNotFound:
        raise not_found(f"job '{job_id[:100]}' does not exist") from None
    except JobFinished as exc:
        raise ApiError(409, "JobFinished",
                       f"job '{job_id}' is already {exc.status}; only queued or running jobs "
                       "can be cancelled") from None
    running = withdraw_job_work(services, job_id)
    await _raise(client, job.instance_id, CANCEL_EVENT, {"by": by, "reason": reason})
    services.log.write("job.cancelled", f"cancelled by {by}" + (f": {reason}" if reason else ""),
                       job_id=job_id, run_id=job.run_id, data={"stopping": running})
    return job.to_api()


async def cancel_run(services: Services, client: df.DurableOrchestrationClient, run_id: str,
                     by: str, reason: str) -> dict[str, Any]:
    status = await client.get_status(run_id)
    runtime = status.runtime_status.value if status and status.runtime_status else None
    run = get_run(services, run_id)
    if runtime is None and run is None:
        raise not_found(f"run '{run_id[:100]}' does not exist")
    if runtime not in _UNFINISHED or (run or {}).get("status") in ("completed", "cancelled"):
        raise ApiError(409, "RunFinished", f"run '{run_id}' has already finished")
    if (run or {}).get("cancelledAt"):
        raise ApiError(409, "RunCancelled", f"run '{run_id}' is already being cancelled")
    now = datetime.now(timezone.utc)
    services.table(services.settings.run_table).upsert_entity(
        {"PartitionKey": run_id, "RowKey": "run", "cancelledAt": now.isoformat(),
         "cancelledBy": by, "cancelReason": reason}, mode=UpdateMode.MERGE)
    stopped = []
    for state in (QUEUED, RUNNING):
        for job in services.jobs.list(status=state, run_id=run_id, limit=100_000):
            try:
                await cancel_job(services, client, job.job_id, by, "its run was cancelled")
                stopped.append(job.job_id)
            except ApiError:
                continue  # it finished meanwhile
    services.log.write("run.cancelled", f"run {run_id} cancelled by {by}", run_id=run_id,
                       data={"jobs": len(stopped)})
    return {"runId": run_id, "status": "cancelling", "cancelledBy": by,
            "cancelledAt": now.isoformat(), "jobsCancelled": len(stopped),
            "statusUrl": f"/api/runs/{run_id}"}


async def cancel_change(client: df.DurableOrchestrationClient, change_id: str, by: str,
                        reason: str) -> dict[str, Any]:
    status = await client.get_status(change_id)
    if status is None or status.runtime_status is None:
        raise not_found(f"change '{change_id[:100]}' does not exist")
    if status.runtime_status.value not in _UNFINISHED:
        raise ApiError(409, "ChangeFinished", f"change '{change_id}' has already finished")
    await _raise(client, change_id, CANCEL_EVENT, {"by": by, "reason": reason})
    return {"changeId": change_id, "status": "cancelling", "cancelledBy": by,
            "statusUrl": f"/api/changes/{change_id}"}


def _original(services: Services, blob: str) -> tuple[str, str]:
    """(container, name) where a finished job's original is kept now."""
    s = services.settings
    for container in (s.failed_container, s.archive_container):
        try:
            describe_blob(services, container, blob)
            return container, blob
        except BlobMissing:
            continue
    raise ApiError(409, "OriginalMissing",
                   f"the original of this job is in neither '{s.failed_container}' nor "
                   f"'{s.archive_container}' (KEEP_ORIGINALS=false, or not moved yet)")


async def retry_job(services: Services, client: df.DurableOrchestrationClient,
                    job_id: str) -> dict[str, Any]:
    """Start the job again from its kept original; a repeat returns the same new job."""
    try:
        job = services.jobs.get(job_id)
    except JobNotFound:
        raise not_found(f"job '{job_id[:100]}' does not exist") from None
    if job.status not in JOB_RETRYABLE:
        raise ApiError(409, "NotRetryable", f"job '{job_id}' is {job.status}; only failed or "
                       "cancelled jobs can be retried")
    container, name = _original(services, job.blob)
    ref = describe_blob(services, container, name)
    # From the job retried and the original's version: a repeat finds the same new job, and a
    # retry of the retry (same original, if it failed again) is a job of its own.
    new_id = "file-" + hashlib.sha256(f"retry\n{job_id}\n{ref.etag}".encode()).hexdigest()[:40]
    created = await start_once(client, PROCESS_FILE, new_id, {
        **file_job_input(services.settings, container, name, new_id), "retryOf": job_id})
    if created:
        services.jobs.note_retry(job_id, new_id)
        services.log.write("job.retried", f"{container}/{name} again as {new_id}",
                           job_id=job_id)
    return {"jobId": new_id, "retryOf": job_id, "blob": f"{container}/{name}",
            "created": created, "statusUrl": f"/api/jobs/{new_id}"}


async def retry_failed_files(services: Services, client: df.DurableOrchestrationClient,
                             run_id: str) -> dict[str, Any]:
    """A new run over exactly the failed files of a finished run, linked to it."""
    run = get_run(services, run_id)
    if run is None:
        raise not_found(f"run '{run_id[:100]}' has no summary (unknown, or still listing)")
    if run.get("status") not in ("completed", "cancelled"):
        raise conflict(f"run '{run_id}' is {run.get('status')}; retry its failed files "
                       "once it has finished")
    failed = services.jobs.list(status=FAILED, run_id=run_id, limit=100_000)
    if not failed:
        raise ApiError(409, "NothingToRetry", f"run '{run_id}' has no failed files")
    container = services.settings.failed_container
    names = sorted({job.blob for job in failed})
    digest = hashlib.sha256("\n".join([run_id, *names]).encode()).hexdigest()[:16]
    new_id = f"{run_id[:50]}-retry-{digest}"
    created = await start_once(client, PROCESS_RUN, new_id, {
        "runId": new_id, "container": container, "prefix": None, "names": names,
        "retryOf": run_id, "jobTemplate": file_job_input(services.settings, container, "", "")})
    if created:
        services.table(services.settings.run_table).upsert_entity(
            {"PartitionKey": run_id, "RowKey": "run", "retriedBy": new_id},
            mode=UpdateMode.MERGE)
        services.log.write("run.retried", f"{len(names)} failed files of {run_id} in {new_id}",
                           run_id=run_id)
    return {"runId": new_id, "retryOf": run_id, "files": len(names), "created": created,
            "statusUrl": f"/api/runs/{new_id}"}
