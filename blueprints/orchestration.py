"""Orchestrations and their activities: one file (`process_file`) and a batch (`process_run`).

The orchestrator bodies live in `shared.orchestrations`; the activities are thin wrappers over
`shared.pipeline`, so each can be tested without the Functions host. Every function is
registered under its name from `shared.contracts`, the same constant its callers use.
"""
import azure.durable_functions as df

from shared import contracts, orchestrations, pipeline, webhooks
from shared.capacity import request_capacity
from shared.services import get_services

bp = df.Blueprint()


@bp.function_name(contracts.PROCESS_FILE)
@bp.orchestration_trigger(context_name="context")
def process_file_orchestrator(context: df.DurableOrchestrationContext):
    return (yield from orchestrations.process_file(context))


@bp.function_name(contracts.PROCESS_RUN)
@bp.orchestration_trigger(context_name="context")
def process_run_orchestrator(context: df.DurableOrchestrationContext):
    return (yield from orchestrations.process_run(context))


@bp.function_name(contracts.START_JOB)
@bp.activity_trigger(input_name="job")
def start_job(job: dict) -> dict:
    return pipeline.start_job(get_services(), job)


@bp.function_name(contracts.ISSUE_WORK_ITEM)
@bp.activity_trigger(input_name="request")
def issue_work_item(request: dict) -> dict:
    services = get_services()
    issued = pipeline.issue_work_item(services, request)
    if not issued.get("cancelled"):  # new work: the scaler looks soon (coalesced, not here)
        request_capacity(services, "work issued", background=True)
    return issued


@bp.function_name(contracts.FINISH_JOB)
@bp.activity_trigger(input_name="outcome")
def finish_job(outcome: dict) -> dict:
    services = get_services()
    recorded = pipeline.finish_job(services, outcome)
    request_capacity(services, "job finished", background=True)  # a slot may be free
    return recorded


@bp.function_name(contracts.REQUEST_CAPACITY)
@bp.activity_trigger(input_name="request")
def request_pool_capacity(request: dict) -> dict:
    return request_capacity(get_services(), request.get("reason", ""))


@bp.function_name(contracts.COLLECT_DATA)
@bp.activity_trigger(input_name="run")
def collect_data(run: dict) -> list:
    return pipeline.collect_files(get_services(), run)


@bp.function_name(contracts.LIST_FILES)
@bp.activity_trigger(input_name="run")
def list_files(run: dict) -> list:
    return pipeline.list_files(get_services(), run["container"], prefix=run.get("prefix"),
                               names=run.get("names"))


@bp.function_name(contracts.RUN_STATE)
@bp.activity_trigger(input_name="run")
def run_state(run: dict) -> dict:
    return pipeline.run_state(get_services(), run["runId"])


@bp.function_name(contracts.DELIVER_WEBHOOK)
@bp.activity_trigger(input_name="request")
def deliver_webhook(request: dict) -> dict:
    services = get_services()
    return webhooks.deliver(services.webhook_policy, services.deliveries, request)


@bp.function_name(contracts.RECORD_RUN)
@bp.activity_trigger(input_name="summary")
def record_run(summary: dict) -> dict:
    return pipeline.record_run(get_services(), summary)
