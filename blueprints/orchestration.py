"""Orchestrations and their activities: one file (`process_file`) and a batch (`process_run`).

The orchestrator bodies live in `shared.orchestrations`; the activities are thin wrappers over
`shared.pipeline`, so each can be tested without the Functions host.
"""
from datetime import datetime, timezone

import azure.durable_functions as df

from shared import orchestrations, pipeline
from shared.capacity import request_capacity
from shared.collectors import collect
from shared.services import get_services

bp = df.Blueprint()


@bp.orchestration_trigger(context_name="context")
def process_file(context: df.DurableOrchestrationContext):
    return (yield from orchestrations.process_file(context))


@bp.orchestration_trigger(context_name="context")
def process_run(context: df.DurableOrchestrationContext):
    return (yield from orchestrations.process_run(context))


@bp.activity_trigger(input_name="job")
def start_job_activity(job: dict) -> dict:
    return pipeline.start_job(get_services(), job)


@bp.activity_trigger(input_name="request")
def issue_work_item_activity(request: dict) -> dict:
    return pipeline.issue_work_item(get_services(), request)


@bp.activity_trigger(input_name="outcome")
def finish_job_activity(outcome: dict) -> dict:
    return pipeline.finish_job(get_services(), outcome)


@bp.activity_trigger(input_name="request")
def request_capacity_activity(request: dict) -> dict:
    return request_capacity(get_services(), request.get("reason", ""))


@bp.activity_trigger(input_name="run")
def collect_data_activity(run: dict) -> list:
    services = get_services()
    written = collect(run["source"], run["runId"], datetime.now(timezone.utc), services.blobs,
                      run["container"])
    return pipeline.list_files(services, run["container"], names=[f.name for f in written])


@bp.activity_trigger(input_name="run")
def list_files_activity(run: dict) -> list:
    return pipeline.list_files(get_services(), run["container"], prefix=run.get("prefix"),
                               names=run.get("names"))


@bp.activity_trigger(input_name="summary")
def record_run_activity(summary: dict) -> dict:
    return pipeline.record_run(get_services(), summary)
