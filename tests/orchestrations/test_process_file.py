"""`process_file` replayed through the SDK's helper: the exact actions of each path."""
from __future__ import annotations

from datetime import timedelta

import pytest

from shared import contracts
from shared.contracts import FileJob
from shared.orchestrations import UnsupportedVersion, process_file
from tests.orchestrations.replay import (
    T0,
    Replay,
    activity,
    activity_with_retry,
    any_of,
    event,
    timer,
)

JOB: FileJob = {"jobId": "file-1", "instanceId": "file-1", "container": "data",
                "blob": "in/a.csv", "runId": "", "actions": ["process"], "maxAttempts": 3,
                "timeoutS": 600, "backoffS": 30.0}
CAPACITY = lambda reason: activity(contracts.REQUEST_CAPACITY, {"reason": reason})  # noqa: E731
VERSION = {"now": "2.0"}  # the version the instance under test was started with


@pytest.fixture(autouse=True, params=["1.0", "2.0"])
def version(request: pytest.FixtureRequest) -> str:
    """Every path in both versions: 1.0 asks for capacity with activities of its own (running
    instances of it must replay unchanged), 2.0 leaves that to the activities it calls."""
    VERSION["now"] = request.param
    return request.param


def work(step: int, action: str, blob: str, attempt: int, start: FileJob | None = None
         ) -> tuple:
    return activity_with_retry(contracts.ISSUE_WORK_ITEM, {
        "jobId": "file-1", "instanceId": "file-1", "step": step, "action": action,
        "blob": blob, "attempt": attempt, **({"start": start} if start else {})})


def first_work(run: Replay, step: int, action: str, blob: str, attempt: int) -> tuple:
    """The next work item; from 2.0 the job's first one also records the job row."""
    start, run.pending_start = getattr(run, "pending_start", None), None
    return work(step, action, blob, attempt, start)


def issued(step: int, attempt: int) -> dict:
    return {"jobId": "file-1", "step": step, "attempt": attempt,
            "eventName": contracts.done_event_name(step, attempt)}


def reported(status: str = "succeeded", **fields: object) -> dict:
    return {"status": status, "vm": "vm01", "exitCode": 0 if status == "succeeded" else 1,
            "error": "", "output": "", "bytesIn": 0, "bytesOut": 0, "durationMs": 5, **fields}


def start(job: FileJob = JOB, **options: object) -> Replay:
    options.setdefault("version", VERSION["now"])
    run = Replay(process_file, job, instance_id=job["instanceId"], **options)
    if options["version"] == "1.0":
        run.expect(activity_with_retry(contracts.START_JOB, job))
        run.complete({"jobId": job["jobId"], "status": "queued"})
    else:
        run.pending_start = job  # type: ignore[attr-defined]
    return run


def issue(run: Replay, step: int, action: str, blob: str, attempt: int) -> None:
    """The work item, then a capacity request, then the wait for done-or-timeout."""
    run.expect(first_work(run, step, action, blob, attempt))
    assert run.context.custom_status == {"state": "waiting", "step": step, "action": action,
                                         "attempt": attempt}
    run.complete(issued(step, attempt))
    if VERSION["now"] == "1.0":
        run.expect(CAPACITY("work issued"))
        run.complete({})
    deadline = run.context.current_utc_datetime + timedelta(seconds=JOB["timeoutS"])
    # done, the attempt's timeout and the job's cancel event race each other
    run.expect(any_of(event(contracts.done_event_name(step, attempt)), timer(deadline),
                      event(contracts.CANCEL_EVENT)))


def finish(run: Replay, outcome: dict) -> None:
    run.expect(activity_with_retry(contracts.FINISH_JOB, outcome))
    assert run.context.custom_status == {"state": "recording", "status": outcome["status"]}
    run.complete({"durationMs": 1234})
    if VERSION["now"] == "1.0":
        run.expect(CAPACITY("job finished"))
        run.complete({})
    assert run.output == {**outcome, "durationMs": 1234}


def test_one_step_done_before_the_timeout_cancels_the_timer() -> None:
    run = start()
    issue(run, 0, "process", "data/in/a.csv", 1)
    done, deadline, _cancel = run.task.children
    run.complete(reported(output="results/in/a.csv.process.out", bytesIn=10, bytesOut=7),
                 task=done)
    assert deadline.action_repr.is_cancelled  # the extension is told to drop the timer
    finish(run, {"jobId": "file-1", "status": "succeeded", "error": "", "bytesIn": 10,
                 "bytesOut": 7, "output": "results/in/a.csv.process.out", "vm": "vm01"})


def test_each_step_consumes_the_previous_steps_output() -> None:
    job: FileJob = {**JOB, "actions": ["extract", "transform"]}
    run = start(job)
    issue(run, 0, "extract", "data/in/a.csv", 1)
    run.complete(reported(output="results/in/a.csv.extract.out", bytesIn=100, bytesOut=40),
                 task=run.task.children[0])
    issue(run, 1, "transform", "results/in/a.csv.extract.out", 1)
    run.complete(reported(output="results/in/a.csv.extract.out.transform.out", bytesIn=40,
                          bytesOut=9, vm="vm02"), task=run.task.children[0])
    # bytes in are the first step's input; bytes out and the output are the last step's
    finish(run, {"jobId": "file-1", "status": "succeeded", "error": "", "bytesIn": 100,
                 "bytesOut": 9, "output": "results/in/a.csv.extract.out.transform.out",
                 "vm": "vm02"})


def test_a_failed_step_stops_the_job_before_the_next_step() -> None:
    job: FileJob = {**JOB, "actions": ["extract", "transform"], "maxAttempts": 1}
    run = start(job)
    issue(run, 0, "extract", "data/in/a.csv", 1)
    run.complete(reported("failed", error="bad header"), task=run.task.children[0])
    # the job's outcome names no VM: the step's attempts may have run on several
    finish(run, {"jobId": "file-1", "status": "failed", "error": "bad header", "bytesIn": 0,
                 "bytesOut": 0, "output": "", "vm": ""})


def test_timeouts_and_failures_are_retried_with_doubling_backoff() -> None:
    run = start()
    issue(run, 0, "process", "data/in/a.csv", 1)
    run.fire(run.task.children[1])  # attempt 1: the timeout wins
    first_backoff = T0 + timedelta(seconds=600 + 30)
    run.expect(any_of(timer(first_backoff), event(contracts.CANCEL_EVENT)))
    run.fire(run.task.children[0])
    issue(run, 0, "process", "data/in/a.csv", 2)
    run.complete(reported("failed", exitCode=3, error=""), task=run.task.children[0])
    second_backoff = first_backoff + timedelta(seconds=60)  # 30 s doubled
    run.expect(any_of(timer(second_backoff), event(contracts.CANCEL_EVENT)))
    run.fire(run.task.children[0])
    issue(run, 0, "process", "data/in/a.csv", 3)
    run.fire(run.task.children[1])  # the last attempt times out: no backoff after it
    finish(run, {"jobId": "file-1", "status": "failed",
                 "error": "step 0 (process) attempt 3 timed out", "bytesIn": 0, "bytesOut": 0,
                 "output": "", "vm": ""})


def test_a_failed_attempt_without_an_error_text_reports_its_exit_code() -> None:
    run = start({**JOB, "maxAttempts": 1})
    issue(run, 0, "process", "data/in/a.csv", 1)
    run.complete(reported("failed", exitCode=3, error=""), task=run.task.children[0])
    finish(run, {"jobId": "file-1", "status": "failed", "error": "exit code 3", "bytesIn": 0,
                 "bytesOut": 0, "output": "", "vm": ""})


def test_an_activity_that_gives_up_still_records_the_job(version: str) -> None:
    run = start()
    run.expect(first_work(run, 0, "process", "data/in/a.csv", 1))
    run.fail(RuntimeError("queue unavailable"))
    if version != "1.0":  # the row may never have been written: it is, before the outcome
        run.expect(activity_with_retry(contracts.START_JOB, JOB))
        run.complete({"jobId": "file-1", "status": "queued"})
    finish(run, {"jobId": "file-1", "status": "failed",
                 "error": "pipeline error: queue unavailable", "bytesIn": 0, "bytesOut": 0,
                 "output": "", "vm": ""})


@pytest.mark.parametrize("version", ["1.0"], indirect=True)  # 2.0 makes no such request
def test_a_failed_capacity_request_only_delays_capacity(version: str) -> None:
    run = start({**JOB, "maxAttempts": 1})
    run.expect(first_work(run, 0, "process", "data/in/a.csv", 1))
    run.complete(issued(0, 1))
    run.expect(CAPACITY("work issued"))
    run.fail(RuntimeError("scaler down"))
    run.expect(any_of(event("done-0-1"), timer(T0 + timedelta(seconds=600)),
                      event(contracts.CANCEL_EVENT)))


def test_an_unknown_version_is_refused_before_any_action() -> None:
    with pytest.raises(UnsupportedVersion, match="'3.0'"):
        Replay(process_file, JOB, version="3.0")


def test_an_instance_without_a_version_is_replayed_as_the_first_version() -> None:
    run = Replay(process_file, JOB, version=None)
    run.expect(activity_with_retry(contracts.START_JOB, JOB))


def test_a_start_that_gives_up_is_recorded_once_storage_is_back() -> None:
    """Storage down as the job begins: the outcome is failed, the row is created first, and
    recording outlasts the outage with durable timers between rounds of retries."""
    run = Replay(process_file, JOB, instance_id=JOB["instanceId"], version=VERSION["now"])
    run.expect(activity_with_retry(contracts.START_JOB, JOB) if VERSION["now"] == "1.0"
               else work(0, "process", "data/in/a.csv", 1, start=JOB))
    run.fail(RuntimeError("JobNotFound"))
    run.expect(activity_with_retry(contracts.START_JOB, JOB))  # the row, before recording
    run.fail(RuntimeError("storage unreachable"))
    first = run.context.current_utc_datetime + timedelta(seconds=30)
    run.expect(timer(first))
    assert run.context.custom_status["retryInS"] == 30
    run.fire()
    run.expect(activity_with_retry(contracts.START_JOB, JOB))
    run.complete({"jobId": "file-1", "status": "queued"})
    finish(run, {"jobId": "file-1", "status": "failed",
                 "error": "pipeline error: JobNotFound", "bytesIn": 0, "bytesOut": 0,
                 "output": "", "vm": ""})


def test_a_job_cancelled_before_its_first_item_records_cancelled() -> None:
    run = start()
    run.expect(first_work(run, 0, "process", "data/in/a.csv", 1))
    run.complete({"jobId": "file-1", "cancelled": True})
    finish(run, {"jobId": "file-1", "status": "cancelled", "error": "cancelled", "bytesIn": 0,
                 "bytesOut": 0, "output": "", "vm": ""})
