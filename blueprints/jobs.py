"""The HTTP API: submit and follow jobs and runs, VM callbacks, deployment gate, OpenAPI.

Function keys protect everything but health and the OpenAPI document; errors are
`{"error": {"code", "message"}}`; handlers validate before they change anything.
"""
import base64
import binascii
import uuid
from pathlib import Path

import azure.durable_functions as df
import azure.functions as func

from blueprints.http_util import (
    api_errors,
    instance_status,
    json_body,
    json_response,
    keyed_response,
)
from shared import callback
from shared.api import (
    ApiError,
    bad_request,
    conflict,
    field,
    int_param,
    not_found,
)
from shared.capacity import request_capacity
from shared.deployment import deployment_status
from shared.idempotency import derived_id, run_idempotent
from shared.jobs import STATUSES, JobNotFound
from shared.naming import BlobNameError, check_blob_name
from shared.orchestrations import file_job_input
from shared.paging import decode_token, list_answer
from shared.pipeline import RUN_STATUSES, BlobMissing, describe_blob, get_run, list_runs
from shared.services import Services, get_services

bp = df.Blueprint()
OPENAPI_PATH = Path(__file__).resolve().parent.parent / "openapi.json"
_RUN_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def _body(req: func.HttpRequest) -> dict:
    return json_body(req, get_services().settings.max_body_bytes)


@bp.route(route="jobs", methods=["POST"])
@bp.durable_client_input(client_name="client")
@api_errors
async def submit_job_http(req: func.HttpRequest,
                          client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """Start a job for a blob in the data container, uploading it first when content is given."""
    services = get_services()
    data = _body(req)
    status, answer, replayed = await run_idempotent(
        services.idempotency, "jobs", dict(req.headers), data,
        lambda key: _submit_job(services, client, data))
    return keyed_response(answer, status, replayed)


async def _submit_job(services: Services, client: df.DurableOrchestrationClient,
                      data: dict) -> tuple[int, dict]:
    s = services.settings
    name = field(data, "blob", str)
    try:
        check_blob_name(name)
    except BlobNameError as exc:
        raise bad_request(f"field 'blob': {exc}") from None
    content = field(data, "content", str, required=False)
    content_b64 = field(data, "contentBase64", str, required=False)
    if content is not None and content_b64 is not None:
        raise bad_request("give either 'content' or 'contentBase64', not both")
    if content_b64 is not None:
        try:
            payload = base64.b64decode(content_b64, validate=True)
        except (binascii.Error, ValueError):
            raise bad_request("field 'contentBase64' is not valid base64") from None
    else:
        payload = content.encode() if content is not None else None
    blob_client = services.blobs.get_blob_client(s.data_container, name)
    if payload is not None:
        blob_client.upload_blob(payload, overwrite=True)
    try:
        ref = describe_blob(services, s.data_container, name)
    except BlobMissing:
        raise not_found(f"blob '{s.data_container}/{name}' does not exist") from None
    existing = await instance_status(client, ref.instance_id)
    if existing is None:
        await client.start_new("process_file", ref.instance_id,
                               file_job_input(s, s.data_container, name, ref.instance_id))
    return 202, {"jobId": ref.instance_id, "blob": f"{s.data_container}/{name}",
                 "created": existing is None, "statusUrl": f"/api/jobs/{ref.instance_id}"}


@bp.route(route="jobs/{job_id}", methods=["GET"])
@bp.durable_client_input(client_name="client")
@api_errors
async def get_job_http(req: func.HttpRequest,
                       client: df.DurableOrchestrationClient) -> func.HttpResponse:
    job_id = req.route_params.get("job_id", "")
    try:
        job = get_services().jobs.get(job_id)
    except JobNotFound:
        raise not_found(f"job '{job_id[:100]}' does not exist") from None
    return json_response({**job.to_api(), "orchestration": await instance_status(client, job_id)})


@bp.route(route="jobs", methods=["GET"])
@api_errors
async def list_jobs_http(req: func.HttpRequest) -> func.HttpResponse:
    status = req.params.get("status") or None
    if status is not None and status not in STATUSES:
        raise bad_request(f"query parameter 'status' must be one of {', '.join(STATUSES)}")
    run_id = req.params.get("runId") or None
    limit = int_param(req.params.get("limit"), "limit", 100, 1, 1000)
    jobs, token = get_services().jobs.page(status=status, run_id=run_id, limit=limit,
                                           after=decode_token(req.params.get("continuationToken")))
    return json_response(list_answer("jobs", [j.to_api() for j in jobs], token))


@bp.route(route="runs", methods=["POST"])
@bp.durable_client_input(client_name="client")
@api_errors
async def start_run_http(req: func.HttpRequest,
                         client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """Start a run over existing blobs: a prefix, or a list of names."""
    services = get_services()
    data = _body(req)
    status, answer, replayed = await run_idempotent(
        services.idempotency, "runs", dict(req.headers), data,
        lambda key: _start_run(services, client, data, key))
    return keyed_response(answer, status, replayed)


async def _start_run(services: Services, client: df.DurableOrchestrationClient, data: dict,
                     key: str | None) -> tuple[int, dict]:
    s = services.settings
    prefix = field(data, "prefix", str, required=False)
    names = field(data, "blobs", list, required=False)
    if (prefix is None) == (names is None):
        raise bad_request("give exactly one of 'prefix' or 'blobs'")
    if names is not None:
        if not names or len(names) > 10_000 or not all(isinstance(n, str) for n in names):
            raise bad_request("field 'blobs' must be a list of 1-10000 blob names")
        for name in names:
            try:
                check_blob_name(name)
            except BlobNameError as exc:
                raise bad_request(f"field 'blobs': {exc}") from None
    run_id = field(data, "runId", str, required=False) or (
        f"run-api-{derived_id('runs', key)}" if key else f"run-api-{uuid.uuid4().hex[:16]}")
    if not 1 <= len(run_id) <= 80 or not set(run_id) <= _RUN_ID_CHARS:
        raise bad_request("field 'runId' may hold 1-80 letters, digits, '-' and '_'")
    if await instance_status(client, run_id) is not None:
        raise conflict(f"run '{run_id}' already exists")
    await client.start_new("process_run", run_id, {
        "runId": run_id, "container": s.data_container, "prefix": prefix, "names": names,
        "jobTemplate": file_job_input(s, s.data_container, "", "")})
    return 202, {"runId": run_id, "statusUrl": f"/api/runs/{run_id}"}


@bp.route(route="runs", methods=["GET"])
@api_errors
async def list_runs_http(req: func.HttpRequest) -> func.HttpResponse:
    """Runs newest first; filter `status`; pages with `continuationToken`."""
    status = req.params.get("status") or None
    if status is not None and status not in RUN_STATUSES:
        raise bad_request(f"query parameter 'status' must be one of {', '.join(RUN_STATUSES)}")
    limit = int_param(req.params.get("limit"), "limit", 100, 1, 1000)
    runs, token = list_runs(get_services(), status, limit,
                            decode_token(req.params.get("continuationToken")))
    return json_response(list_answer("runs", runs, token))


@bp.route(route="runs/{run_id}", methods=["GET"])
@bp.durable_client_input(client_name="client")
@api_errors
async def get_run_http(req: func.HttpRequest,
                       client: df.DurableOrchestrationClient) -> func.HttpResponse:
    run_id = req.route_params.get("run_id", "")
    orchestration = await instance_status(client, run_id)
    summary = get_run(get_services(), run_id)
    if orchestration is None and summary is None:
        raise not_found(f"run '{run_id[:100]}' does not exist")
    return json_response({"runId": run_id, "orchestration": orchestration, "summary": summary})


@bp.route(route="vms/{vm}/jobs/{job_id}/done", methods=["POST"])
@bp.durable_client_input(client_name="client")
@api_errors
async def vm_done_http(req: func.HttpRequest,
                       client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """A VM reports a finished step; verified before the orchestration hears of it."""
    services = get_services()
    vm = req.route_params.get("vm", "")
    event = callback.check_done(services, vm, req.route_params.get("job_id", ""),
                                req.get_body(), dict(req.headers))
    if event.repeat:
        return json_response({"accepted": True, "repeat": True})
    try:
        await client.raise_event(event.instance_id, event.event_name, event.payload)
    except Exception as exc:  # noqa: BLE001 - the SDK raises a bare Exception per status
        if "is gone" in str(exc):
            raise ApiError(410, "JobFinished", "the job has already finished") from None
        if "No instance" in str(exc):
            raise not_found("the job's orchestration does not exist") from None
        raise
    callback.acknowledge(services, event, vm)
    return json_response({"accepted": True, "repeat": False})


@bp.route(route="vms/{vm}/idle", methods=["POST"])
@api_errors
async def vm_idle_http(req: func.HttpRequest) -> func.HttpResponse:
    """The agent has nothing to do (the seed's shutdown request); the scaler decides."""
    services = get_services()
    vm = req.route_params.get("vm", "")
    idle = callback.check_idle(services, vm, req.get_body(), dict(req.headers))
    services.log.write("vm.idle", f"VM {vm} idle for {idle}s", vm=vm)
    applied = request_capacity(services, f"{vm} idle")
    return json_response({"vm": vm, "deallocate": vm in applied.get("deallocate", [])})


@bp.route(route="deployment/status", methods=["GET"])
@bp.durable_client_input(client_name="client")
@api_errors
async def deployment_status_http(req: func.HttpRequest,
                                 client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """For a deployment gate: may this slot be swapped out now?"""
    return json_response(await deployment_status(client, get_services().settings.taskhub_name))


@bp.route(route="openapi.json", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@api_errors
async def openapi_http(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(OPENAPI_PATH.read_bytes(), mimetype="application/json")
