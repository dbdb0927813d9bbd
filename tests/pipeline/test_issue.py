"""issue_work_item with `start` (orchestration 2.0): the job row first, then the item."""
from __future__ import annotations

import uuid

import pytest

from shared.control import withdraw_job_work
from shared.pipeline import issue_work_item, start_job
from shared.services import Services
from shared.settings import Settings
from shared.storage import StorageConnection, ensure_resources
from shared.workitem import WorkItem
from tools.storage_proxy import StorageProxy


@pytest.fixture()
def services(settings: Settings, connection: StorageConnection) -> Services:
    ensure_resources(settings, connection)
    svc = Services(settings, connection)
    svc.work_queue.clear_messages()
    return svc


def _job() -> dict:
    job_id = f"job-{uuid.uuid4().hex[:12]}"
    return {"jobId": job_id, "instanceId": job_id, "container": "data", "blob": "a.json",
            "actions": ["process"]}


def _request(job: dict, **extra: object) -> dict:
    return {"jobId": job["jobId"], "instanceId": job["jobId"], "step": 0,
            "action": "process", "blob": "data/a.json", "attempt": 1, **extra}


def test_the_first_item_records_the_job_row_then_issues(services: Services) -> None:
    job = _job()
    issued = issue_work_item(services, _request(job, start=job))
    assert issued["eventName"] == "done-0-1" and not issued.get("cancelled")
    row = services.jobs.get(job["jobId"])
    assert (row.status, row.attempts, row.blob) == ("running", 1, "a.json")
    message = services.work_queue.receive_message()
    assert WorkItem.from_json(message.content).job_id == job["jobId"]
    # Durable may run the activity again: the row stays one row, the attempt one attempt.
    issue_work_item(services, _request(job, start=job))
    assert services.jobs.get(job["jobId"]).attempts == 1


def test_a_job_cancelled_before_its_first_item_issues_nothing(services: Services) -> None:
    job = _job()
    start_job(services, job)
    services.jobs.cancel(job["jobId"], "api", "changed my mind")
    assert issue_work_item(services, _request(job, start=job)) == {
        "jobId": job["jobId"], "cancelled": True}
    assert services.work_queue.peek_messages() == []
    assert services.jobs.get(job["jobId"]).status == "cancelled"


def test_a_first_item_costs_four_writes_and_no_read(settings: Settings, proxy: StorageProxy,
                                                    services: Services) -> None:
    proxied = Services(settings, StorageConnection("AzureWebJobsStorage",
                                                   connection_string=proxy.connection_string))
    job = _job()
    proxy.clear()
    issue_work_item(proxied, _request(job, start=job))
    seen = [(s.service, s.method, s.path.rsplit("/", 1)[-1].split("(")[0], s.status)
            for s in proxy.requests()]
    # The item row, the job row created running it, the message, both events in one batch.
    assert seen == [("table", "POST", settings.result_table, 201),
                    ("table", "POST", settings.result_table, 201),
                    ("queue", "POST", "messages", 201),
                    ("table", "POST", "$batch", 202)]
    kinds = sorted(e["kind"] for e in services.log.day() if e["jobId"] == job["jobId"])
    assert kinds == ["job.queued", "work.issued"]
    row = services.jobs.get(job["jobId"])
    assert (row.status, row.step, row.attempts) == ("running", 0, 1)
    assert row.started_at is not None and row.created_at == row.started_at


def test_a_cancel_landing_while_an_item_is_issued_stops_it(services: Services) -> None:
    job = _job()
    issue_work_item(services, _request(job, start=job))
    services.work_queue.clear_messages()
    record = services.issued.record

    def cancelled_meanwhile(item: WorkItem) -> None:
        record(item)  # the cancel of control.cancel_job lands here: row first, then items
        services.jobs.cancel(job["jobId"], "api", "changed my mind")
        assert withdraw_job_work(services, job["jobId"]) == []

    services.issued.record = cancelled_meanwhile  # type: ignore[method-assign]
    assert issue_work_item(services, _request(job, step=1, attempt=1)) == {
        "jobId": job["jobId"], "cancelled": True}
    assert services.work_queue.peek_messages() == []
    assert services.claims.get(job["jobId"], WorkItem(job["jobId"], job["jobId"], 1, "process",
                                                       "data/a.json", 1).step_key
                               ).state == "withdrawn"
