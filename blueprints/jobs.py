"""The jobs area of the HTTP API: submit and follow jobs and runs, the VM callbacks that finish
their steps, the deployment gate and the OpenAPI document.

Function keys protect everything but health and the OpenAPI document; errors are
`{"error": {"code", "message"}}`; handlers validate before they change anything.
"""
from pathlib import Path

import azure.durable_functions as df
import azure.functions as func

from blueprints.http_util import (
    api_errors,
    idempotent_submit,
    instance_status,
    json_body,
    json_response,
)
from shared import callback, contracts, control
from shared.api import bad_request, choice_param, conflict, int_param, not_found
from shared.capacity import scaler_pass
from shared.contracts import RUN_STATUSES
from shared.cost import CostBook
from shared.deployment import deployment_status
from shared.durable_client import raise_event, start_once
from shared.jobs import STATUSES, JobNotFound
from shared.naming import InstanceIdError, check_instance_id
from shared.paging import decode_token, list_answer
from shared.pipeline import get_run, list_runs
from shared.services import Services, get_services
from shared.submissions import submit_job, submit_run

bp = df.Blueprint()
OPENAPI_PATH = Path(__file__).resolve().parent.parent / "openapi.json"


def _body(req: func.HttpRequest) -> dict:
    return json_body(req, get_services().settings.max_body_bytes)


def route_id(req: func.HttpRequest, name: str, what: str) -> str:
    """A job or run id from the route, refused (400) unless it is one the app could have made."""
    try:
        return check_instance_id(req.route_params.get(name, ""), what)
    except InstanceIdError as exc:
        raise bad_request(str(exc)) from None


@bp.route(route="jobs", methods=["POST"])
@bp.durable_client_input(client_name="client")
@api_errors
async def submit_job_http(req: func.HttpRequest,
                          client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """Start a job for a blob in the data container, uploading it first when content is given."""
    services = get_services()
    data = _body(req)
    return await idempotent_submit(req, services, "jobs", data,
                                   lambda key: _submit_job(services, client, data))


async def _submit_job(services: Services, client: df.DurableOrchestrationClient,
                      data: dict) -> tuple[int, dict]:
    job = submit_job(services, data)
    created = await start_once(client, contracts.PROCESS_FILE, job.instance_id, job.job)
    return 202, job.response(created)


@bp.route(route="jobs/{job_id}", methods=["GET"])
@bp.durable_client_input(client_name="client")
@api_errors
async def get_job_http(req: func.HttpRequest,
                       client: df.DurableOrchestrationClient) -> func.HttpResponse:
    job_id = route_id(req, "job_id", "job id")
    try:
        job = get_services().jobs.get(job_id)
    except JobNotFound:
        raise not_found(f"job '{job_id[:100]}' does not exist") from None
    services = get_services()
    return json_response({**job.to_api(), "orchestration": await instance_status(client, job_id),
                          "deliveries": services.deliveries.for_resource(job_id),
                          "cost": CostBook(services, job_id=job_id).job(job_id)})


@bp.route(route="jobs", methods=["GET"])
@api_errors
async def list_jobs_http(req: func.HttpRequest) -> func.HttpResponse:
    status = choice_param(req.params.get("status"), "status", STATUSES)
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
    return await idempotent_submit(req, services, "runs", data,
                                   lambda key: _start_run(services, client, data, key))


async def _start_run(services: Services, client: df.DurableOrchestrationClient, data: dict,
                     key: str | None) -> tuple[int, dict]:
    run = submit_run(services, data, key)
    run_id = run["runId"]
    if not await start_once(client, contracts.PROCESS_RUN, run_id, run):
        raise conflict(f"run '{run_id}' already exists")
    return 202, {"runId": run_id, "statusUrl": f"/api/runs/{run_id}"}


@bp.route(route="runs", methods=["GET"])
@api_errors
async def list_runs_http(req: func.HttpRequest) -> func.HttpResponse:
    """Runs newest first; filter `status`; pages with `continuationToken`."""
    status = choice_param(req.params.get("status"), "status", RUN_STATUSES)
    limit = int_param(req.params.get("limit"), "limit", 100, 1, 1000)
    runs, token = list_runs(get_services(), status, limit,
                            decode_token(req.params.get("continuationToken")))
    return json_response(list_answer("runs", runs, token))


@bp.route(route="runs/{run_id}", methods=["GET"])
@bp.durable_client_input(client_name="client")
@api_errors
async def get_run_http(req: func.HttpRequest,
                       client: df.DurableOrchestrationClient) -> func.HttpResponse:
    run_id = route_id(req, "run_id", "run id")
    orchestration = await instance_status(client, run_id)
    summary = get_run(get_services(), run_id)
    if orchestration is None and summary is None:
        raise not_found(f"run '{run_id[:100]}' does not exist")
    services = get_services()
    return json_response({"runId": run_id, "orchestration": orchestration, "summary": summary,
                          "deliveries": services.deliveries.for_resource(run_id),
                          "cost": CostBook(services).run(run_id).to_api()})


def _cancel_request(req: func.HttpRequest) -> tuple[str, str]:
    return control.cancel_request(req.get_body(), dict(req.headers),
                                  get_services().settings.max_body_bytes)


@bp.route(route="jobs/{job_id}/cancel", methods=["POST"])
@bp.durable_client_input(client_name="client")
@api_errors
async def cancel_job_http(req: func.HttpRequest,
                          client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """Cancel a queued or running job: its work is withdrawn, a running action is stopped."""
    by, reason = _cancel_request(req)
    job = await control.cancel_job(get_services(), client, req.route_params.get("job_id", ""),
                                   by, reason)
    return json_response(job, 202)


@bp.route(route="jobs/{job_id}/retry", methods=["POST"])
@bp.durable_client_input(client_name="client")
@api_errors
async def retry_job_http(req: func.HttpRequest,
                         client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """Run a failed or cancelled job again from its kept original (a new, linked job)."""
    answer = await control.retry_job(get_services(), client, req.route_params.get("job_id", ""))
    return json_response(answer, 202)


@bp.route(route="runs/{run_id}/cancel", methods=["POST"])
@bp.durable_client_input(client_name="client")
@api_errors
async def cancel_run_http(req: func.HttpRequest,
                          client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """Cancel a run: files not finished are cancelled; the run records a partial summary."""
    by, reason = _cancel_request(req)
    answer = await control.cancel_run(get_services(), client, req.route_params.get("run_id", ""),
                                      by, reason)
    return json_response(answer, 202)


@bp.route(route="runs/{run_id}/retry-failed", methods=["POST"])
@bp.durable_client_input(client_name="client")
@api_errors
async def retry_failed_run_http(req: func.HttpRequest,
                                client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """A new run over exactly the failed files of a finished run, linked to it."""
    answer = await control.retry_failed_files(get_services(), client,
                                              req.route_params.get("run_id", ""))
    return json_response(answer, 202)


@bp.route(route="vms/{vm}/jobs/{job_id}/done", methods=["POST"])
@bp.durable_client_input(client_name="client")
@api_errors
async def vm_done_http(req: func.HttpRequest,
                       client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """A VM reports a finished step; verified before the orchestration hears of it."""
    services = get_services()
    vm = req.route_params.get("vm", "")
    event = callback.check_done(services, vm, route_id(req, "job_id", "job id"),
                                req.get_body(), dict(req.headers))
    etag = None if event.repeat else callback.acknowledge(services, event, vm)
    if etag is None:  # acknowledged before (a retry) or by a concurrent identical call
        return json_response({"accepted": True, "repeat": True})
    try:
        await raise_event(client, event.instance_id, event.event_name, event.payload)
    except Exception:
        callback.withdraw(services, event, etag)
        raise
    callback.record_done(services, event, vm)
    return json_response({"accepted": True, "repeat": False})


@bp.route(route="vms/{vm}/idle", methods=["POST"])
@api_errors
async def vm_idle_http(req: func.HttpRequest) -> func.HttpResponse:
    """The agent has nothing to do (the seed's shutdown request); the scaler decides."""
    services = get_services()
    vm = req.route_params.get("vm", "")
    idle = callback.check_idle(services, vm, req.get_body(), dict(req.headers))
    services.log.write("vm.idle", f"VM {vm} idle for {idle}s", vm=vm)
    applied = scaler_pass(services, f"{vm} idle")
    return json_response({"vm": vm, "deallocate": vm in applied.get("deallocate", [])})


@bp.route(route="vms/{vm}/evicted", methods=["POST"])
@api_errors
async def vm_evicted_http(req: func.HttpRequest) -> func.HttpResponse:
    """A spot VM's agent saw Azure's Preempt notice and handed its work back."""
    services = get_services()
    vm = req.route_params.get("vm", "")
    event_id = callback.check_evicted(services, vm, req.get_body(), dict(req.headers))
    callback.record_eviction(services, vm, event_id)
    applied = scaler_pass(services, f"{vm} evicted")
    return json_response({"vm": vm, "state": "evicted", "start": applied.get("start", [])})


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
