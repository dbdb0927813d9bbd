"""The pool area: the scaler backstop timer, pool status, and pool changes as orchestrations."""
import logging
from datetime import timedelta

import azure.durable_functions as df
import azure.functions as func

from blueprints.http_util import (
    api_errors,
    idempotent_submit,
    instance_status,
    json_body,
    json_response,
)
from shared import contracts, control, orchestrations
from shared.api import choice_param, int_param, not_found
from shared.capacity import pool_status, scaler_pass
from shared.changes import (
    change_step,
    list_changes,
    parse_change,
    record_change,
    valid_change_id,
)
from shared.contracts import CHANGE_STATUSES, CHANGE_TYPES
from shared.cost import CostBook, parse_time
from shared.durable_client import start_once
from shared.idempotency import derived_id
from shared.paging import decode_token, list_answer
from shared.services import get_services
from shared.sweeper import sweep_now_and_then

bp = df.Blueprint()
log = logging.getLogger(__name__)


@bp.timer_trigger(arg_name="timer", schedule="%SCALER_SCHEDULE%", run_on_startup=True)
@bp.durable_client_input(client_name="client")
async def pool_scaler_timer(timer: func.TimerRequest,
                            client: df.DurableOrchestrationClient) -> None:
    """Backstop: idle VMs past cooldown, VMs that never came up, claims of silent VMs, and
    (now and then) jobs whose orchestration ended without recording them."""
    services = get_services()
    applied = scaler_pass(services, "timer")
    if any(applied.get(k) for k in ("start", "deallocate", "mark_failed", "abandoned")):
        log.info("pool_scaler_timer: %s", applied)
    swept = await sweep_now_and_then(services, client)
    if swept:
        log.info("pool_scaler_timer swept jobs: %s", swept)


@bp.route(route="pool", methods=["GET"])
@api_errors
async def pool_status_http(req: func.HttpRequest) -> func.HttpResponse:
    return json_response(pool_status(get_services()))


@bp.route(route="cost", methods=["GET"])
@api_errors
async def cost_http(req: func.HttpRequest) -> func.HttpResponse:
    """Billed VM-seconds (boot, processing, idle; money with VM_PRICES) per day and per run."""
    services = get_services()
    book = CostBook(services)
    until = parse_time(req.params.get("to"), "to", book.now)
    since = parse_time(req.params.get("from"), "from", until - timedelta(days=7))
    # At most a year per answer (a longer span is cut at its start); an empty span is empty.
    since = min(max(since, until - timedelta(days=366)), until)
    return json_response(book.report(since, until))


@bp.route(route="changes", methods=["POST"])
@bp.durable_client_input(client_name="client")
@api_errors
async def submit_change_http(req: func.HttpRequest,
                             client: df.DurableOrchestrationClient) -> func.HttpResponse:
    services = get_services()
    data = json_body(req, services.settings.max_body_bytes)

    async def submit(key: str | None) -> tuple[int, dict]:
        change = parse_change(services, data,
                              f"change-{derived_id('changes', key)}" if key else None)
        # A keyed request taking over from one that died may find the change started.
        if await start_once(client, contracts.POOL_CHANGE, change.change_id, change.to_input()):
            record_change(services, {**change.to_input(), "status": "pending"})
        return 202, {"changeId": change.change_id,
                     "statusUrl": f"/api/changes/{change.change_id}"}

    return await idempotent_submit(req, services, "changes", data, submit)


@bp.route(route="changes", methods=["GET"])
@api_errors
async def list_changes_http(req: func.HttpRequest) -> func.HttpResponse:
    """Pool changes newest first; filters `status`, `changeType`; `continuationToken` pages."""
    status = choice_param(req.params.get("status"), "status", CHANGE_STATUSES)
    change_type = choice_param(req.params.get("changeType"), "changeType", CHANGE_TYPES)
    limit = int_param(req.params.get("limit"), "limit", 100, 1, 1000)
    changes, token = list_changes(get_services(), status, change_type, limit,
                                  decode_token(req.params.get("continuationToken")))
    return json_response(list_answer("changes", changes, token))


@bp.route(route="changes/{change_id}", methods=["GET"])
@bp.durable_client_input(client_name="client")
@api_errors
async def get_change_http(req: func.HttpRequest,
                          client: df.DurableOrchestrationClient) -> func.HttpResponse:
    change_id = req.route_params.get("change_id", "")
    if not valid_change_id(change_id):
        raise not_found(f"change '{change_id[:100]}' does not exist")
    status = await instance_status(client, change_id)
    if status is None:
        raise not_found(f"change '{change_id}' does not exist")
    return json_response({"changeId": change_id, "runtimeStatus": status["runtimeStatus"],
                          **(status["customStatus"] or {}), "input": status["input"],
                          "output": status["output"],
                          "deliveries": get_services().deliveries.for_resource(change_id)})


@bp.route(route="changes/{change_id}/cancel", methods=["POST"])
@bp.durable_client_input(client_name="client")
@api_errors
async def cancel_change_http(req: func.HttpRequest,
                             client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """Stop a change before its next step (what is done stays done)."""
    services = get_services()
    change_id = req.route_params.get("change_id", "")
    if not valid_change_id(change_id):
        raise not_found(f"change '{change_id[:100]}' does not exist")
    by, reason = control.cancel_request(req.get_body(), dict(req.headers),
                                        services.settings.max_body_bytes)
    return json_response(await control.cancel_change(client, change_id, by, reason), 202)


@bp.function_name(contracts.POOL_CHANGE)
@bp.orchestration_trigger(context_name="context")
def pool_change_orchestrator(context: df.DurableOrchestrationContext):
    return (yield from orchestrations.pool_change(context))


@bp.function_name(contracts.CHANGE_STEP)
@bp.activity_trigger(input_name="request")
def run_change_step(request: dict) -> dict:
    """One step of a change, once; backend errors become the step's error, not a crash."""
    return change_step(get_services(), request)


@bp.function_name(contracts.RECORD_CHANGE)
@bp.activity_trigger(input_name="change")
def record_pool_change(change: dict) -> dict:
    record_change(get_services(), change)
    return {"changeId": change["changeId"], "status": change["status"]}
