"""`process_run` replayed through the SDK's helper: listing, chunked fan-out, continue_as_new."""
from __future__ import annotations

from datetime import timedelta

from shared import contracts
from shared.orchestrations import RUN_CHUNK, process_run
from tests.orchestrations.replay import (
    T0,
    Replay,
    activity_with_retry,
    all_of,
    continue_as_new,
    sub_orchestrator,
)

TEMPLATE = {"jobId": "", "instanceId": "", "container": "data", "blob": "", "runId": "",
            "actions": ["process"], "maxAttempts": 3, "timeoutS": 600, "backoffS": 30.0}
RUN = {"runId": "run-7", "container": "data", "jobTemplate": TEMPLATE, "prefix": "in/",
       "names": None}


def files(count: int) -> list[dict]:
    return [{"container": "data", "name": f"in/{n:03d}.csv", "etag": f"e{n}", "size": n,
             "instanceId": f"file-{n:040d}"} for n in range(count)]


def child(f: dict) -> tuple:
    instance_id = f"run-7-{f['instanceId'].removeprefix('file-')[:24]}"
    return sub_orchestrator(contracts.PROCESS_FILE, {
        **TEMPLATE, "jobId": instance_id, "instanceId": instance_id, "container": "data",
        "blob": f["name"], "runId": "run-7"}, instance_id)


def outcome(status: str, bytes_in: int = 0, bytes_out: int = 0) -> dict:
    return {"status": status, "bytesIn": bytes_in, "bytesOut": bytes_out}


def test_a_run_lists_its_files_and_fans_out_one_chunk_per_generation() -> None:
    listed = files(RUN_CHUNK + 1)
    run = Replay(process_run, RUN, instance_id="run-7")
    run.expect(activity_with_retry(contracts.LIST_FILES, RUN))
    run.complete(listed)
    summary = {"files": RUN_CHUNK + 1, "succeeded": 0, "failed": 0, "cancelled": 0,
               "bytesIn": 0, "bytesOut": 0}
    run.expect(activity_with_retry(contracts.RECORD_RUN, {
        **summary, "runId": "run-7", "status": "running", "startedAt": T0.isoformat()}))
    run.complete({})
    run.expect(all_of(*(child(f) for f in listed[:RUN_CHUNK])))
    assert run.context.custom_status == {"state": "processing", "done": 0,
                                         "files": RUN_CHUNK + 1}
    run.complete_all([outcome("succeeded", 10, 1)] * (RUN_CHUNK - 1) + [outcome("failed")])
    # Before another generation the run asks whether it was cancelled.
    run.expect(activity_with_retry(contracts.RUN_STATE, {"runId": "run-7"}))
    run.complete({"cancelled": None})
    # The first generation ends here; the next one starts from its own input.
    assert run.output == {}
    carried = {**RUN, "files": listed, "offset": RUN_CHUNK, "startedAt": T0.isoformat(),
               "summary": {**summary, "succeeded": RUN_CHUNK - 1, "failed": 1,
                           "bytesIn": 10 * (RUN_CHUNK - 1), "bytesOut": RUN_CHUNK - 1}}
    assert run.context.will_continue_as_new
    assert run.recorded() == [continue_as_new(carried)]


def test_the_last_generation_records_the_summary_and_returns_it() -> None:
    listed = files(RUN_CHUNK + 1)
    carried = {**RUN, "files": listed, "offset": RUN_CHUNK, "startedAt": T0.isoformat(),
               "summary": {"files": RUN_CHUNK + 1, "succeeded": 40, "failed": 10,
                           "cancelled": 0, "bytesIn": 400, "bytesOut": 40}}
    later = T0 + timedelta(minutes=5, seconds=1.5)
    run = Replay(process_run, carried, instance_id="run-7", now=later)
    run.expect(all_of(child(listed[RUN_CHUNK])))  # no listing again, only what is left
    assert run.context.custom_status == {"state": "processing", "done": RUN_CHUNK,
                                         "files": RUN_CHUNK + 1}
    run.complete_all([outcome("succeeded", 5, 2)])
    run.expect(activity_with_retry(contracts.RUN_STATE, {"runId": "run-7"}))
    run.complete({"cancelled": None})
    summary = {"files": RUN_CHUNK + 1, "succeeded": 41, "failed": 10, "cancelled": 0,
               "bytesIn": 405,
               "bytesOut": 42, "runId": "run-7", "status": "completed",
               "startedAt": T0.isoformat(), "finishedAt": later.isoformat(), "durationS": 301.5}
    run.expect(activity_with_retry(contracts.RECORD_RUN, summary))
    run.complete(summary)
    assert run.output == summary
    assert run.context.custom_status == {"state": "completed", "done": RUN_CHUNK + 1,
                                         "files": RUN_CHUNK + 1}
    assert not run.context.will_continue_as_new


def test_a_collector_run_collects_instead_of_listing_and_may_find_nothing() -> None:
    tick = {"runId": "run-7", "container": "data", "jobTemplate": TEMPLATE,
            "source": "sample", "scheduledAt": T0.isoformat()}
    run = Replay(process_run, tick, instance_id="run-7")
    run.expect(activity_with_retry(contracts.COLLECT_DATA, tick))
    run.complete([])
    empty = {"files": 0, "succeeded": 0, "failed": 0, "cancelled": 0, "bytesIn": 0,
             "bytesOut": 0}
    run.expect(activity_with_retry(contracts.RECORD_RUN, {
        **empty, "runId": "run-7", "status": "running", "startedAt": T0.isoformat()}))
    run.complete({})
    # Nothing to fan out: no empty task_all, only the cancel check before the summary.
    run.expect(activity_with_retry(contracts.RUN_STATE, {"runId": "run-7"}))
    run.complete({"cancelled": None})
    summary = {**empty, "runId": "run-7", "status": "completed", "startedAt": T0.isoformat(),
               "finishedAt": T0.isoformat(), "durationS": 0.0}
    run.expect(activity_with_retry(contracts.RECORD_RUN, summary))
    run.complete(summary)
    assert run.output == summary
