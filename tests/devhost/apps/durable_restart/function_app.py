"""Sample Durable app for the restart test: a chain with a timer, an event and a gated step.

Every activity execution records a blob under its step name in DURABLE_TEST_CONTAINER, so
the test can count how often each step ran across engine restarts. `gated_step` waits until
the file named by DURABLE_TEST_GATE exists, so the test can stop the engine while it runs.
"""
from __future__ import annotations

import os
import time
import uuid
from datetime import timedelta
from pathlib import Path

import azure.durable_functions as df
import azure.functions as func
from azure.storage.blob import ContainerClient

app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)


def record(key: str) -> None:
    container = ContainerClient.from_connection_string(os.environ["AzureWebJobsStorage"],
                                                       os.environ["DURABLE_TEST_CONTAINER"])
    container.upload_blob(f"{key}/{uuid.uuid4().hex}", b"")


@app.activity_trigger(input_name="step")
def record_step(step: str) -> str:
    record(step)
    return step


@app.activity_trigger(input_name="step")
def gated_step(step: str) -> str:
    record(step)
    gate = Path(os.environ["DURABLE_TEST_GATE"])
    deadline = time.monotonic() + 60
    while not gate.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return step


@app.orchestration_trigger(context_name="context")
def resumable(context: df.DurableOrchestrationContext):
    steps = []
    steps.append((yield context.call_activity("record_step", "a1")))
    steps.append((yield context.call_activity("record_step", "a2")))
    context.set_custom_status("timer")
    yield context.create_timer(context.current_utc_datetime + timedelta(seconds=1))
    context.set_custom_status("waiting-go")
    go = yield context.wait_for_external_event("go")
    context.set_custom_status("gated")
    steps.append((yield context.call_activity("gated_step", "a3")))
    steps.append((yield context.call_activity("record_step", "a4")))
    context.set_custom_status("done")
    return {"steps": steps, "go": go}


@app.orchestration_trigger(context_name="context")
def waiting_child(context: df.DurableOrchestrationContext):
    word = yield context.wait_for_external_event("word")
    echoed = yield context.call_activity("record_step", word)
    return f"child got {echoed}"


@app.orchestration_trigger(context_name="context")
def parent_of_waiting(context: df.DurableOrchestrationContext):
    context.set_custom_status("child started")
    result = yield context.call_sub_orchestrator("waiting_child", None,
                                                 instance_id=f"{context.instance_id}-kid")
    return {"parent got": result}


@app.entity_trigger(context_name="context")
def box(context: df.DurableEntityContext) -> None:
    items = context.get_state(list)
    if context.operation_name == "put":
        items.append(context.get_input())
        context.set_state(items)
    context.set_result(items)


@app.orchestration_trigger(context_name="context")
def boxer(context: df.DurableOrchestrationContext):
    entity = df.EntityId("box", "shared")
    yield context.call_entity(entity, "put", "first")
    yield context.wait_for_external_event("more")
    items = yield context.call_entity(entity, "put", "second")
    return items
