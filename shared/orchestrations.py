"""Orchestrator bodies (generators over a Durable context), kept free of azure.functions.

Rules: deterministic replay — no I/O, no clocks but `context.current_utc_datetime`, no random;
everything that touches storage is an activity. Configuration (actions, retries, timeouts) is
captured in the orchestration's input when it starts, so a settings change or a deployment never
alters an instance that is already running.
"""
from __future__ import annotations

import json
from collections.abc import Generator
from datetime import datetime, timedelta
from typing import Any

import azure.durable_functions as df

from shared.api import public_reason
from shared.contracts import (
    CANCEL_EVENT,
    CANCELLED,
    CHANGE_STEP,
    COLLECT_DATA,
    COMPLETED,
    DELIVER_WEBHOOK,
    DONE,
    FAILED,
    FINISH_JOB,
    ISSUE_WORK_ITEM,
    LIST_FILES,
    PENDING,
    PROCESS_FILE,
    RECORD_CHANGE,
    RECORD_RUN,
    REQUEST_CAPACITY,
    RUN_STATE,
    RUNNING,
    START_JOB,
    SUCCEEDED,
    ChangeInput,
    ChangeStepRequest,
    FileJob,
    IssuedWork,
    JobOutcome,
    RunInput,
    RunSummary,
    StepResult,
    WorkRequest,
)

RUN_CHUNK = 50  # sub-orchestrations per generation of process_run (bounds its history)
# Orchestration versions this code can replay. host.json's `defaultVersion` stamps new
# instances; an instance of a version this code does not know fails fast instead of replaying
# a history written by different code (deploy newer code beside it; see docs/deployment.md).
# 1.0 asked for capacity with an activity of its own after each work item and at the end;
# from 2.0 the work-item and finish activities ask themselves (two episodes fewer per file).
KNOWN_VERSIONS = ("1.0", "2.0")
ACTIVITY_RETRY = df.RetryOptions(first_retry_interval_in_milliseconds=2000,
                                 max_number_of_attempts=5)


class UnsupportedVersion(RuntimeError):
    """The instance was started by a version of the app this code cannot replay."""


def event_payload(value: Any) -> dict[str, Any]:
    """An external event's data as an object. Raised through the SDK it arrives decoded; an
    event whose body was JSON text (raised as a string, or by a host that keeps the text)
    arrives as that text, so it is decoded once more. Anything else reads as empty."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def check_version(context: df.DurableOrchestrationContext) -> str:
    version = context.version or KNOWN_VERSIONS[0]  # started before versions were stamped
    if version not in KNOWN_VERSIONS:
        raise UnsupportedVersion(f"orchestration version {version!r} is not one of "
                                 f"{', '.join(KNOWN_VERSIONS)}")
    return version


def process_file(context: df.DurableOrchestrationContext) -> Generator[Any, Any, dict]:
    """One file through every action: work item, capacity, done-or-timeout, bounded retries."""
    legacy = check_version(context) == "1.0"
    job: FileJob = context.get_input()
    blob = f"{job['container']}/{job['blob']}"
    outcome: JobOutcome = {"jobId": job["jobId"], "status": SUCCEEDED, "error": "",
                           "bytesIn": 0, "bytesOut": 0, "output": "", "vm": ""}
    # From 2.0 the job row is recorded by the first work item's activity (one episode fewer);
    # `started` says whether that activity (or 1.0's START_JOB) has returned.
    progress = {"started": False, "capacitySteps": legacy, "startWith": not legacy}
    # One task for the whole job: raced against every wait below, it ends the job early.
    cancel = context.wait_for_external_event(CANCEL_EVENT)
    try:
        row = None
        if legacy:  # inside the error handling too: storage may be down when the job begins
            row = yield context.call_activity_with_retry(START_JOB, ACTIVITY_RETRY, job)
            progress["started"] = True
        for step, action in enumerate(job["actions"]):
            if (row or {}).get("status") == CANCELLED:
                result = {"status": CANCELLED}
            else:
                result = yield from _run_step(context, job, step, action, blob, cancel,
                                              progress)
            if result.get("status") == CANCELLED:
                outcome.update(status=CANCELLED, error=CANCELLED)
                break
            if result.get("status") != SUCCEEDED:
                outcome.update(status=FAILED, error=result.get("error") or "step failed",
                               vm=result.get("vm", ""))
                break
            if step == 0:
                outcome["bytesIn"] = int(result.get("bytesIn") or 0)
            outcome.update(bytesOut=int(result.get("bytesOut") or 0),
                           output=result.get("output") or "", vm=result.get("vm", ""))
            blob = outcome["output"] or blob  # the next step consumes this step's output
    except Exception as exc:  # noqa: BLE001 - an activity gave up: record, don't strand the job
        outcome.update(status=FAILED, error=f"pipeline error: {public_reason(exc)}")
    recorded = yield from _record(context, job, outcome, progress["started"])
    if legacy:
        yield from _request_capacity(context, "job finished")
    yield from notify(context, job.get("webhook"),
                      f"job.{recorded.get('status') or outcome['status']}", job["jobId"],
                      recorded or dict(outcome))
    return {**outcome, "durationMs": recorded.get("durationMs", 0)}


FINISH_ROUNDS = 6  # rounds of FINISH_JOB (each with its own retries) before giving up
FINISH_BACKOFF_S = 30  # between rounds, doubling: about 30 minutes in all


def _record(context: df.DurableOrchestrationContext, job: FileJob, outcome: JobOutcome,
            started: bool) -> Generator[Any, Any, dict]:
    """Record the outcome and move the original, outlasting a storage outage: rounds of
    retries with durable timers between them (the job row is created first if the start never
    got through). If every round fails, the orchestration still completes, its custom status
    says so, and the job sweeper repairs the row and the original from the output."""
    for round_ in range(FINISH_ROUNDS):
        context.set_custom_status({"state": "recording", "status": outcome["status"]})
        try:
            if not started:
                yield context.call_activity_with_retry(START_JOB, ACTIVITY_RETRY, job)
                started = True
            return (yield context.call_activity_with_retry(FINISH_JOB, ACTIVITY_RETRY,
                                                           outcome))
        except Exception:  # noqa: BLE001 - storage may come back: wait and try again
            wait = FINISH_BACKOFF_S * (2 ** round_)
            context.set_custom_status({"state": "recording", "status": outcome["status"],
                                       "retryInS": wait})
            yield context.create_timer(context.current_utc_datetime + timedelta(seconds=wait))
    context.set_custom_status({"state": "unrecorded", "status": outcome["status"]})
    return {}


def notify(context: df.DurableOrchestrationContext, webhook: dict[str, Any] | None, event: str,
           resource_id: str, resource: dict[str, Any]) -> Generator[Any, Any, bool]:
    """Deliver a final state to the caller's callbackUrl: one attempt per activity call, a
    durable timer doubling the pause between attempts. A receiver that never takes it does not
    fail the work; every attempt is on record."""
    if not webhook:
        return False
    request = {"resourceId": resource_id, "event": event, "url": webhook["url"],
               "deliveryId": f"{resource_id}.{event}", "resource": resource}
    attempts = int(webhook["maxAttempts"])
    for attempt in range(1, attempts + 1):
        try:
            result = yield context.call_activity(DELIVER_WEBHOOK, {**request, "attempt": attempt})
        except Exception:  # noqa: BLE001 - the activity itself failed: count it as an attempt
            result = {"delivered": False, "retry": True}
        if result.get("delivered") or not result.get("retry"):
            return bool(result.get("delivered"))
        if attempt < attempts:
            pause = float(webhook["backoffS"]) * 2 ** (attempt - 1)
            yield context.create_timer(context.current_utc_datetime + timedelta(seconds=pause))
    return False


def _request_capacity(context: df.DurableOrchestrationContext,
                      reason: str) -> Generator[Any, Any, None]:
    """Ask the scaler for a pass; a failure only delays capacity (the timer is the backstop)."""
    try:
        yield context.call_activity(REQUEST_CAPACITY, {"reason": reason})
    except Exception:  # noqa: BLE001, S110 - the scaler timer evaluates again shortly
        pass


def _run_step(context: df.DurableOrchestrationContext, job: FileJob, step: int,
              action: str, blob: str, cancel: Any,
              progress: dict[str, bool]) -> Generator[Any, Any, StepResult | dict]:
    error = ""
    cancelled = {"status": "cancelled"}
    for attempt in range(1, int(job["maxAttempts"]) + 1):
        if cancel.is_completed:
            return cancelled
        context.set_custom_status({"state": "waiting", "step": step, "action": action,
                                   "attempt": attempt})
        request: WorkRequest = {"jobId": job["jobId"], "instanceId": context.instance_id,
                                "step": step, "action": action, "blob": blob,
                                "attempt": attempt}
        if progress["startWith"] and not progress["started"]:
            request["start"] = job  # record the job row first, in the same activity
        issued: IssuedWork = yield context.call_activity_with_retry(
            ISSUE_WORK_ITEM, ACTIVITY_RETRY, request)
        progress["started"] = True
        if issued.get("cancelled"):
            return cancelled
        if progress["capacitySteps"]:
            yield from _request_capacity(context, "work issued")
        deadline = context.current_utc_datetime + timedelta(seconds=int(job["timeoutS"]))
        done = context.wait_for_external_event(issued["eventName"])
        timer = context.create_timer(deadline)
        winner = yield context.task_any([done, timer, cancel])
        if winner == cancel:
            timer.cancel()
            return cancelled
        if winner == done:
            if not timer.is_completed:
                timer.cancel()
            result = event_payload(done.result)
            if result.get("status") == SUCCEEDED:
                return result
            error = result.get("error") or f"exit code {result.get('exitCode')}"
        else:
            error = f"step {step} ({action}) attempt {attempt} timed out"
        if attempt < int(job["maxAttempts"]):
            backoff = float(job["backoffS"]) * (2 ** (attempt - 1))
            pause = context.create_timer(context.current_utc_datetime + timedelta(seconds=backoff))
            if (yield context.task_any([pause, cancel])) == cancel:
                pause.cancel()
                return cancelled
    return {"status": FAILED, "error": error}


def process_run(context: df.DurableOrchestrationContext) -> Generator[Any, Any, dict]:
    """A batch: collect or list files, fan out `process_file` in chunks, fan in a summary."""
    check_version(context)
    run: RunInput = context.get_input()
    if "files" not in run:
        files = yield context.call_activity_with_retry(
            COLLECT_DATA if run.get("source") else LIST_FILES, ACTIVITY_RETRY, run)
        run = {**run, "files": files, "offset": 0, "startedAt":
               context.current_utc_datetime.isoformat(),
               "summary": {"files": len(files), "succeeded": 0, "failed": 0, "cancelled": 0,
                           "bytesIn": 0, "bytesOut": 0,
                           **({"retryOf": run["retryOf"]} if run.get("retryOf") else {})}}
        yield context.call_activity_with_retry(RECORD_RUN, ACTIVITY_RETRY, {
            **run["summary"], "runId": run["runId"], "status": RUNNING,
            "startedAt": run["startedAt"]})
    files, offset = run["files"], run["offset"]
    summary: RunSummary = dict(run["summary"])  # type: ignore[assignment]
    chunk = files[offset:offset + RUN_CHUNK]
    context.set_custom_status({"state": "processing", "done": offset, "files": len(files)})
    tasks = []
    for f in chunk:
        # Own ids per run, so a run over blobs the blob trigger already saw cannot collide.
        instance_id = f"{run['runId']}-{f['instanceId'].removeprefix('file-')[:24]}"
        tasks.append(context.call_sub_orchestrator(
            PROCESS_FILE, {**run["jobTemplate"], "jobId": instance_id,
                             "instanceId": instance_id, "container": f["container"],
                             "blob": f["name"], "runId": run["runId"]},
            instance_id=instance_id))
    results = (yield context.task_all(tasks)) if tasks else []
    for result in results:
        key = result.get("status") if result.get("status") in (SUCCEEDED, CANCELLED) \
            else FAILED
        summary[key] = summary.get(key, 0) + 1
        summary["bytesIn"] += int(result.get("bytesIn") or 0)
        summary["bytesOut"] += int(result.get("bytesOut") or 0)
    offset += len(chunk)
    # A cancelled run starts no more chunks (the files of the chunk in hand, cancelled one by
    # one, have just ended).
    state = yield context.call_activity_with_retry(RUN_STATE, ACTIVITY_RETRY,
                                                   {"runId": run["runId"]})
    cancelled = bool(state.get("cancelled"))
    if offset < len(files) and not cancelled:
        context.continue_as_new({**run, "offset": offset, "summary": summary})
        return {}
    if cancelled:  # the files never started count as cancelled: the summary adds up
        summary["cancelled"] = summary.get("cancelled", 0) + len(files) - offset
        summary.update(cancelledAt=state["cancelled"]["at"], cancelledBy=state["cancelled"]["by"])
    finished = context.current_utc_datetime
    started = datetime.fromisoformat(run["startedAt"])  # parsing only; no clock is read
    summary.update(runId=run["runId"], status=CANCELLED if cancelled else COMPLETED,
                   startedAt=run["startedAt"], finishedAt=finished.isoformat(),
                   durationS=round((finished - started).total_seconds(), 3))
    yield context.call_activity_with_retry(RECORD_RUN, ACTIVITY_RETRY, summary)
    yield from notify(context, run.get("webhook"), f"run.{summary['status']}", run["runId"],
                      summary)
    context.set_custom_status({"state": summary["status"], "done": len(files),
                               "files": len(files)})
    return summary


CHANGE_POLL_SECONDS = 10


def pool_change(context: df.DurableOrchestrationContext) -> Generator[Any, Any, dict]:
    """A pool change: its steps in order, slow backend operations polled after durable timers.

    Progress (each step's status, `done/total`) is the custom status, so
    `GET /api/changes/{id}` shows it while the change runs.
    """
    check_version(context)
    change: ChangeInput = context.get_input()
    steps = [dict(step) for step in change["steps"]]
    change = {**change, "steps": steps, "status": RUNNING, "error": ""}

    def publish() -> None:
        done = sum(1 for s in steps if s["status"] == DONE)
        context.set_custom_status({"status": change["status"], "progress": f"{done}/{len(steps)}",
                                   "steps": steps, "error": change["error"]})

    # A cancel stops the change before its next step, or while it waits on a slow one; what
    # the steps before did stays done.
    cancel = context.wait_for_external_event(CANCEL_EVENT)
    for step in steps:
        if cancel.is_completed:
            break
        step["status"] = RUNNING
        publish()
        request: ChangeStepRequest = {"step": step, "spec": change.get("spec") or {},
                                      "operation": None}
        result = yield context.call_activity(CHANGE_STEP, request)
        while not result["done"]:
            wait = float(result.get("retryAfter") or CHANGE_POLL_SECONDS)
            pause = context.create_timer(context.current_utc_datetime + timedelta(seconds=wait))
            if (yield context.task_any([pause, cancel])) == cancel:
                pause.cancel()
                break
            result = yield context.call_activity(
                CHANGE_STEP, {**request, "operation": result.get("operation")})
        if not result["done"]:
            break  # cancelled while it waited
        if result.get("error"):
            step["status"] = FAILED
            change.update(status=FAILED, error=f"{step['vm']} {step['step']}: "
                                                 f"{result['error']}")
            break
        step["status"] = DONE
    else:
        change["status"] = SUCCEEDED
    if cancel.is_completed and change["status"] == RUNNING:
        by = event_payload(cancel.result).get("by", "api")
        for step in steps:
            if step["status"] in (PENDING, RUNNING):
                step["status"] = CANCELLED
        change.update(status=CANCELLED, error=f"cancelled by {by}")
    publish()
    yield context.call_activity_with_retry(RECORD_CHANGE, ACTIVITY_RETRY, change)
    yield from notify(context, change.get("webhook"), f"change.{change['status']}",
                      change["changeId"],
                      {k: v for k, v in change.items() if k not in ("webhook", "spec")})
    return change
