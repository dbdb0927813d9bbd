"""The job sweeper: jobs whose orchestration ended while their row still says queued or running
(a storage outage in the last activity, a terminated instance) are repaired, on the scaler's
backstop timer.

For each such job, older than `HEARTBEAT_TIMEOUT_SECONDS` (a row exists only once its
orchestration runs, so the age only keeps the sweep off jobs that are just starting), the
orchestration's status decides:
- completed: its output is the outcome; record it and move the original (`finish_job` is
  repeat-safe), as the orchestration's last activity would have;
- failed, terminated, canceled or gone: the original still in its container is processed
  again under the same id; one that is gone leaves the job recorded as failed with the reason.
Still pending or running: nothing to do.

A file can also wait in the data container with no orchestration at all: its trigger fired,
but the start was lost with storage (the host's receipt survived a crash that the instance did
not). Each file older than the same age whose instance does not exist is started as the
trigger would have started it.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

import azure.durable_functions as df

from shared import contracts
from shared.clock import utcnow
from shared.contracts import file_job_input
from shared.durable_client import RESTARTABLE, start_or_restart
from shared.ingest import waiting_files
from shared.jobs import QUEUED, RUNNING, Job
from shared.pipeline import finish_job
from shared.services import Services

log = logging.getLogger(__name__)
SWEEP_LIMIT = 200  # jobs of each open status looked at per pass
_last_sweep = float("-inf")


async def sweep_now_and_then(services: Services, client: df.DurableOrchestrationClient
                             ) -> dict[str, str]:
    """`sweep_jobs` at most once per `HEARTBEAT_TIMEOUT_SECONDS` in this process (the scaler
    timer fires more often, and a sweep reads every open job)."""
    global _last_sweep  # noqa: PLW0603 - one clock per process, like the scaler's
    every_s = float(services.settings.heartbeat_timeout_seconds)
    clock = time.monotonic()
    if clock - _last_sweep < every_s:
        return {}
    _last_sweep = clock
    return await sweep_jobs(services, client, age_s=every_s)


async def sweep_jobs(services: Services, client: df.DurableOrchestrationClient,
                     now: datetime | None = None, age_s: float = 300.0) -> dict[str, str]:
    """Repair open jobs whose orchestration has ended; returns {job id: what was done}."""
    cutoff = (now or utcnow()) - timedelta(seconds=age_s)
    done: dict[str, str] = {}
    for status in (QUEUED, RUNNING):
        for job in services.jobs.list(status=status, limit=SWEEP_LIMIT):
            if job.created_at is None or job.created_at > cutoff:
                continue
            try:
                action = await _repair(services, client, job)
            except Exception:  # noqa: BLE001 - one job's trouble must not stop the sweep
                log.warning("sweeper: could not repair job %s", job.job_id, exc_info=True)
                continue
            if action:
                done[job.job_id] = action
                services.log.write("job.swept", f"{job.container}/{job.blob}: {action}",
                                   job_id=job.job_id, run_id=job.run_id)
    done.update(await _start_unstarted(services, client, cutoff))
    return done


async def _start_unstarted(services: Services, client: df.DurableOrchestrationClient,
                           cutoff: datetime) -> dict[str, str]:
    """Start the files waiting in data/ whose orchestration does not exist."""
    done: dict[str, str] = {}
    for instance_id, payload in waiting_files(services, cutoff, SWEEP_LIMIT):
        try:
            status = await client.get_status(instance_id)
            if status is not None and status.runtime_status is not None:
                continue  # it exists: the job repair above (or the instance) handles it
            outcome = await start_or_restart(client, contracts.PROCESS_FILE, instance_id,
                                             payload)
        except Exception:  # noqa: BLE001 - one file's trouble must not stop the sweep
            log.warning("sweeper: could not start %s", instance_id, exc_info=True)
            continue
        done[instance_id] = f"file never started: {outcome} it"
        services.log.write("job.swept", f"{payload['container']}/{payload['blob']}: "
                           f"{done[instance_id]}", job_id=payload.get("jobId", ""))
    return done


async def _repair(services: Services, client: df.DurableOrchestrationClient,
                  job: Job) -> str:
    state = await client.get_status(job.instance_id)
    runtime = None if state is None else state.runtime_status
    if runtime == df.OrchestrationRuntimeStatus.Completed:
        outcome = state.output if isinstance(state.output, dict) else {}
        if outcome.get("jobId") != job.job_id:
            outcome = {"jobId": job.job_id, "status": contracts.FAILED,
                       "error": "the orchestration completed without an outcome"}
        finish_job(services, outcome)
        return f"recorded the completed orchestration's outcome ({outcome['status']})"
    if runtime is not None and runtime not in RESTARTABLE:
        return ""  # pending or running: it will record the job itself
    source = services.blobs.get_blob_client(job.container, job.blob)
    if source.exists():
        payload = file_job_input(services.settings, job.container, job.blob, job.instance_id,
                                 job.run_id)
        outcome = await start_or_restart(client, contracts.PROCESS_FILE, job.instance_id,
                                         payload)
        return f"orchestration {runtime.value if runtime else 'missing'}: {outcome} it"
    services.jobs.record_finished(
        job.job_id, contracts.FAILED,
        error=f"the orchestration ended ({runtime.value if runtime else 'missing'}) and the "
              "original is gone")
    return "recorded as failed: orchestration ended, original gone"
