"""issue_work_item with `start` (orchestration 2.0): the job row first, then the item."""
from __future__ import annotations

import uuid

import pytest

from shared.pipeline import issue_work_item, start_job
from shared.services import Services
from shared.settings import Settings
from shared.storage import StorageConnection, ensure_resources
from shared.workitem import WorkItem


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
