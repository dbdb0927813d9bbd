"""What the HTTP API accepts to start work: a job for one blob, a run over many.

Each request is validated completely before anything changes (a refused request uploads
nothing and starts nothing); what it starts is built by the contracts' one builder of each
orchestration input.
"""
from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from typing import Any

from shared.api import bad_request, field, not_found
from shared.contracts import FileJob, RunInput, file_job_input, run_input
from shared.idempotency import derived_id
from shared.naming import (
    BlobNameError,
    InstanceIdError,
    check_instance_id,
    check_prefix,
    check_source_blob_name,
)
from shared.pipeline import BlobMissing, describe_blob
from shared.services import Services
from shared.webhooks import callback_url, webhook_input

MAX_RUN_BLOBS = 10_000
MAX_RUN_ID = 80
RESERVED_RUN_PREFIX = "run-"  # the app's own run ids: the timer's run-<time>, run-api-<id>


@dataclass(frozen=True)
class JobSubmission:
    """A job to start for a blob of the data container."""

    container: str
    blob: str
    instance_id: str
    job: FileJob

    def response(self, created: bool) -> dict[str, Any]:
        return {"jobId": self.instance_id, "blob": f"{self.container}/{self.blob}",
                "created": created, "statusUrl": f"/api/jobs/{self.instance_id}"}


def _blob_name(services: Services, value: str, what: str) -> str:
    """A file to process: a valid name that leaves room for its output and failure names."""
    try:
        return check_source_blob_name(value, services.settings.pipeline_actions)
    except BlobNameError as exc:
        raise bad_request(f"field '{what}': {exc}") from None


def _run_id(value: str) -> str:
    """A caller-chosen run id: routable, and outside the app's own `run-` namespace."""
    try:
        check_instance_id(value, "field 'runId'")
    except InstanceIdError as exc:
        raise bad_request(str(exc)) from None
    if len(value) > MAX_RUN_ID:
        raise bad_request(f"field 'runId' must be at most {MAX_RUN_ID} characters")
    if value.lower().startswith(RESERVED_RUN_PREFIX):
        # The timer's ids are run-<scheduled time>: a caller must not pre-empt one.
        raise bad_request(f"field 'runId' must not start with '{RESERVED_RUN_PREFIX}' "
                          "(reserved for the app's own runs)")
    return value


def _content(data: dict[str, Any]) -> bytes | None:
    """The upload a job request carries: text `content` or `contentBase64`, or none."""
    content = field(data, "content", str, required=False)
    content_b64 = field(data, "contentBase64", str, required=False)
    if content is not None and content_b64 is not None:
        raise bad_request("give either 'content' or 'contentBase64', not both")
    if content_b64 is not None:
        try:
            return base64.b64decode(content_b64, validate=True)
        except (binascii.Error, ValueError):
            raise bad_request("field 'contentBase64' is not valid base64") from None
    return content.encode() if content is not None else None


def submit_job(services: Services, data: dict[str, Any]) -> JobSubmission:
    """`POST /api/jobs`: upload the content first when given; the blob must then exist."""
    s = services.settings
    name = _blob_name(services, field(data, "blob", str), "blob")
    webhook = webhook_input(services.webhook_policy,
                            callback_url(services.webhook_policy, data))
    payload = _content(data)
    if payload is not None:
        services.blobs.get_blob_client(s.data_container, name).upload_blob(payload,
                                                                            overwrite=True)
    try:
        ref = describe_blob(services, s.data_container, name)
    except BlobMissing:
        raise not_found(f"blob '{s.data_container}/{name}' does not exist") from None
    job = file_job_input(s, s.data_container, name, ref.instance_id)
    if webhook:
        job["webhook"] = webhook  # type: ignore[typeddict-unknown-key]
    return JobSubmission(s.data_container, name, ref.instance_id, job)


def submit_run(services: Services, data: dict[str, Any], key: str | None = None) -> RunInput:
    """`POST /api/runs`: a run over a prefix or a list of blob names (missing ones skipped).

    Without a `runId` the id is derived from the idempotency `key` when there is one (a retry
    names the same run), else random."""
    if ("prefix" in data) == ("blobs" in data):
        raise bad_request("give exactly one of 'prefix' or 'blobs'")
    prefix = field(data, "prefix", str, required="prefix" in data)
    names = field(data, "blobs", list, required="blobs" in data)
    if prefix is not None:
        try:
            check_prefix(prefix)
        except BlobNameError as exc:
            raise bad_request(f"field 'prefix': {exc}") from None
    if names is not None:
        if (not names or len(names) > MAX_RUN_BLOBS
                or not all(isinstance(n, str) for n in names)):
            raise bad_request(f"field 'blobs' must be a list of 1-{MAX_RUN_BLOBS} blob names")
        for name in names:
            _blob_name(services, name, "blobs")
    chosen = field(data, "runId", str, required=False)
    if chosen is not None:
        run_id = _run_id(chosen)
    elif key:
        run_id = f"{RESERVED_RUN_PREFIX}api-{derived_id('runs', key)}"
    else:
        run_id = f"{RESERVED_RUN_PREFIX}api-{uuid.uuid4().hex[:16]}"
    webhook = webhook_input(services.webhook_policy,
                            callback_url(services.webhook_policy, data))
    run = run_input(services.settings, run_id, prefix=prefix, names=names)
    if webhook:
        run["webhook"] = webhook  # type: ignore[typeddict-unknown-key]
    return run
