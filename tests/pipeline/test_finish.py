"""finish_job moves the original server-side: archive or failed/, metadata kept, repeat-safe."""
from __future__ import annotations

import json
import uuid
from dataclasses import replace

import pytest

from shared.ingest import file_start_for_blob
from shared.pipeline import finish_job, start_job
from shared.services import Services
from shared.settings import Settings
from shared.storage import StorageConnection, ensure_resources


@pytest.fixture()
def services(settings: Settings, connection: StorageConnection) -> Services:
    ensure_resources(settings, connection)
    return Services(replace(settings, keep_originals=True), connection)


def _job(svc: Services, body: bytes = b'{"n": 1}') -> tuple[str, str]:
    name = f"in/{uuid.uuid4().hex}.json"
    data = svc.settings.data_container
    svc.blobs.get_blob_client(data, name).upload_blob(body, metadata={"source": "test"})
    job_id = f"job-{uuid.uuid4().hex[:12]}"
    start_job(svc, {"jobId": job_id, "instanceId": job_id, "container": data, "blob": name,
                    "actions": ["process"]})
    return job_id, name


def _outcome(job_id: str, status: str) -> dict:
    return {"jobId": job_id, "status": status, "error": "boom" if status == "failed" else "",
            "bytesIn": 8, "bytesOut": 3, "output": "", "vm": "vm01"}


def test_a_succeeded_job_archives_its_original_and_says_so(services: Services) -> None:
    job_id, name = _job(services)
    row = finish_job(services, _outcome(job_id, "succeeded"))
    assert row["status"] == "succeeded" and row["bytesIn"] == 8
    archived = services.blobs.get_blob_client(services.settings.archive_container, name)
    assert archived.download_blob().readall() == b'{"n": 1}'
    assert archived.get_blob_properties().metadata == {"source": "test"}
    assert not services.blobs.get_blob_client(services.settings.data_container, name).exists()
    # A repeat of the activity changes nothing and answers the same row.
    etag = services.jobs.get(job_id).etag
    again = finish_job(services, _outcome(job_id, "succeeded"))
    assert again["status"] == "succeeded" and again["finishedAt"] == row["finishedAt"]
    assert services.jobs.get(job_id).etag == etag
    assert archived.download_blob().readall() == b'{"n": 1}'


def test_a_failed_job_keeps_its_original_in_failed_with_the_error(services: Services) -> None:
    job_id, name = _job(services, b"payload")
    finish_job(services, _outcome(job_id, "failed"))
    failed = services.settings.failed_container
    assert services.blobs.get_blob_client(failed, name).download_blob().readall() == b"payload"
    error = json.loads(services.blobs.get_blob_client(failed, f"{name}.error.json")
                       .download_blob().readall())
    assert error["status"] == "failed" and error["error"] == "boom"
    assert not services.blobs.get_blob_client(services.settings.data_container, name).exists()


def test_the_returned_row_is_the_stored_row(services: Services) -> None:
    """The row a write returns is built from its ETag, not read back: it must be what a read
    gives, ETag included, so the next conditional write succeeds."""
    job_id, _ = _job(services)
    attempt = services.jobs.record_attempt(job_id, 0, 1)
    stored = services.jobs.get(job_id)
    assert attempt.etag == stored.etag and attempt.status == stored.status == "running"
    assert attempt.attempts == stored.attempts == 1 and attempt.started_at is not None
    done = services.jobs.record_finished(job_id, "succeeded", vm="vm01", bytes_in=2)
    stored = services.jobs.get(job_id)
    assert (done.etag, done.status, done.vm, done.bytes_in, done.duration_ms) == \
        (stored.etag, stored.status, stored.vm, stored.bytes_in, stored.duration_ms)


def test_a_newer_upload_under_the_same_name_is_left_for_its_own_job(
        services: Services) -> None:
    """The job knows the version it was started for: a file replaced meanwhile is neither
    archived nor deleted by the old job's finish."""
    data = services.settings.data_container
    name = f"in/{uuid.uuid4().hex}.json"
    client = services.blobs.get_blob_client(data, name)
    first = client.upload_blob(b"old").get("etag")
    start = file_start_for_blob(services, data, name)
    assert start is not None and start[1]["etag"] == first
    job_id, job = start
    start_job(services, job)
    client.upload_blob(b"new", overwrite=True)  # a newer file, its own job to come
    finish_job(services, _outcome(job_id, "succeeded"))
    assert client.download_blob().readall() == b"new"
    assert not services.blobs.get_blob_client(services.settings.archive_container,
                                              name).exists()


def test_the_trigger_is_believed_only_when_it_told_a_storage_etag(
        services: Services) -> None:
    data = services.settings.data_container
    name = f"in/{uuid.uuid4().hex}.json"
    etag = services.blobs.get_blob_client(data, name).upload_blob(
        b"x", metadata={"run_id": "run-1"})["etag"]
    # Told everything: the metadata the trigger saw decides (this blob was not asked about).
    assert file_start_for_blob(services, data, name,
                               {"etag": etag, "size": 1, "metadata": {}}) is not None
    # Told an ETag in no shape storage writes, or no metadata: storage is asked, and its
    # metadata (a run owns this blob) decides.
    for seen in ({"etag": "{}", "metadata": {}}, {"etag": etag, "metadata": None}):
        assert file_start_for_blob(services, data, name, seen) is None
