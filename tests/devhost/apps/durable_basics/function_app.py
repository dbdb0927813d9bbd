"""Sample Durable app for the devhost durable engine tests: one orchestrator per feature.

Activities that must be counted record one blob per execution in the container named by
DURABLE_TEST_CONTAINER (storage from AzureWebJobsStorage).
"""
from __future__ import annotations

import asyncio
import os
import uuid
from datetime import timedelta

import azure.durable_functions as df
import azure.functions as func
from azure.storage.blob import ContainerClient

app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)


def _container() -> ContainerClient:
    return ContainerClient.from_connection_string(os.environ["AzureWebJobsStorage"],
                                                  os.environ["DURABLE_TEST_CONTAINER"])


def record(key: str) -> int:
    """Record one execution under `key`; returns how many were recorded before it."""
    container = _container()
    before = sum(1 for _ in container.list_blobs(name_starts_with=f"{key}/"))
    container.upload_blob(f"{key}/{uuid.uuid4().hex}", b"")
    return before


# --- activities --------------------------------------------------------------------------

@app.activity_trigger(input_name="name")
def hello(name: str) -> str:
    return f"hello {name}"


@app.activity_trigger(input_name="text")
async def shout(text: str) -> str:
    await asyncio.sleep(0)
    return text.upper()


@app.activity_trigger(input_name="n")
def square(n: int) -> int:
    return n * n


@app.activity_trigger(input_name="job")
def flaky(job: dict) -> str:
    before = record(job["key"])
    if before < job["fail_times"]:
        raise RuntimeError(f"flaky failure {before + 1}")
    return f"ok after {before + 1}"


@app.activity_trigger(input_name="message")
def explode(message: str) -> str:
    raise ValueError(message)


# --- orchestrators -----------------------------------------------------------------------

@app.orchestration_trigger(context_name="context")
def chain(context: df.DurableOrchestrationContext):
    first = yield context.call_activity("hello", context.get_input())
    second = yield context.call_activity("shout", first)
    return [first, second]


@app.orchestration_trigger(context_name="context")
def fan_out(context: df.DurableOrchestrationContext):
    count = context.get_input()
    results = yield context.task_all([context.call_activity("square", i) for i in range(count)])
    return {"count": len(results), "sum": sum(results)}


@app.orchestration_trigger(context_name="context")
def approval(context: df.DurableOrchestrationContext):
    seconds = context.get_input()
    deadline = context.current_utc_datetime + timedelta(seconds=seconds)
    timer = context.create_timer(deadline)
    answer = context.wait_for_external_event("approve")
    winner = yield context.task_any([answer, timer])
    if winner == answer:
        timer.cancel()
        return {"approved": answer.result}
    return "timed out"


@app.orchestration_trigger(context_name="context")
def retry_flaky(context: df.DurableOrchestrationContext):
    job = context.get_input()
    options = df.RetryOptions(first_retry_interval_in_milliseconds=50,
                              max_number_of_attempts=job["attempts"])
    try:
        result = yield context.call_activity_with_retry("flaky", options, job)
    except Exception as exc:  # noqa: BLE001 - the test reads the surfaced failure
        return {"error": str(exc)}
    return {"result": result}


@app.orchestration_trigger(context_name="context")
def mixed_retry(context: df.DurableOrchestrationContext):
    """With-retry and plain tasks in one fan-out, then one more step: numbering must hold."""
    prefix = context.get_input()
    options = df.RetryOptions(first_retry_interval_in_milliseconds=20, max_number_of_attempts=3)
    retried = [context.call_activity_with_retry(
        "flaky", options, {"key": f"{prefix}-{i}", "fail_times": i % 3}) for i in range(6)]
    plain = [context.call_activity("square", i) for i in range(4)]
    results = yield context.task_all(retried + plain)
    after = yield context.call_activity("hello", "after")
    return {"results": results, "after": after}


@app.orchestration_trigger(context_name="context")
def tangle(context: df.DurableOrchestrationContext):
    """Retries, a timer race, a retried child and a reused task, interleaved."""
    prefix = context.get_input()
    options = df.RetryOptions(first_retry_interval_in_milliseconds=10, max_number_of_attempts=3)
    first = context.call_activity_with_retry("flaky", options,
                                             {"key": f"{prefix}-a", "fail_times": 2})
    timer = context.create_timer(context.current_utc_datetime + timedelta(milliseconds=30))
    yield context.task_any([first, timer])
    child = context.call_sub_orchestrator_with_retry(
        "flaky_child", options, {"key": f"{prefix}-c", "fail_times": 1},
        instance_id=f"{context.instance_id}-child")
    both = yield context.task_all([child, context.call_activity("square", 3), first])
    more = yield context.task_all([context.call_activity_with_retry(
        "flaky", options, {"key": f"{prefix}-x{i}", "fail_times": i % 3}) for i in range(4)])
    return {"both": both, "more": more}


@app.orchestration_trigger(context_name="context")
def parent(context: df.DurableOrchestrationContext):
    child_id = f"{context.instance_id}-child"
    result = yield context.call_sub_orchestrator("child", {"x": 21}, instance_id=child_id)
    return {"child": result}


@app.orchestration_trigger(context_name="context")
def child(context: df.DurableOrchestrationContext):
    value = context.get_input()["x"]
    doubled = yield context.call_activity("square", value)
    return {"square": doubled, "parent": context.parent_instance_id, "me": context.instance_id}


@app.orchestration_trigger(context_name="context")
def flaky_child(context: df.DurableOrchestrationContext):
    result = yield context.call_activity("flaky", context.get_input())
    return result


@app.orchestration_trigger(context_name="context")
def parent_retry(context: df.DurableOrchestrationContext):
    options = df.RetryOptions(first_retry_interval_in_milliseconds=50, max_number_of_attempts=3)
    result = yield context.call_sub_orchestrator_with_retry(
        "flaky_child", options, context.get_input(), instance_id=f"{context.instance_id}-c")
    return result


@app.orchestration_trigger(context_name="context")
def counter(context: df.DurableOrchestrationContext):
    n = context.get_input() or 0
    yield context.call_activity("hello", str(n))
    if n < 3:
        context.continue_as_new(n + 1)
        return None
    return {"final": n, "execution_input": context.get_input()}


@app.orchestration_trigger(context_name="context")
def staged(context: df.DurableOrchestrationContext):
    context.set_custom_status({"stage": "waiting"})
    data = yield context.wait_for_external_event("next")
    context.set_custom_status({"stage": "done", "got": data})
    return data


@app.orchestration_trigger(context_name="context")
def failing(context: df.DurableOrchestrationContext):
    yield context.call_activity("hello", "before")
    yield context.call_activity("explode", "boom from activity")
    return "not reached"


@app.orchestration_trigger(context_name="context")
def catching(context: df.DurableOrchestrationContext):
    try:
        yield context.call_activity("explode", "caught boom")
    except Exception as exc:  # noqa: BLE001 - returned for the test to read
        return f"caught: {exc}"
    return "not reached"


@app.orchestration_trigger(context_name="context")
def versioned(context: df.DurableOrchestrationContext):
    yield context.call_activity("hello", "v")
    return context.version


@app.orchestration_trigger(context_name="context")
def uses_http(context: df.DurableOrchestrationContext):
    response = yield context.call_http("GET", "http://127.0.0.1:1/")
    return response


@app.orchestration_trigger(context_name="context")
def waiter(context: df.DurableOrchestrationContext):
    data = yield context.wait_for_external_event("go")
    greeting = yield context.call_activity("hello", data)
    return greeting


@app.entity_trigger(context_name="context")
def tally(context: df.DurableEntityContext) -> None:
    value = context.get_state(lambda: 0)
    operation = context.operation_name
    if operation == "add":
        context.set_state(value + context.get_input())
    elif operation == "add_and_get":
        value += context.get_input()
        context.set_state(value)
        context.set_result(value)
    elif operation == "get":
        context.set_result(value)
    elif operation == "fail":
        raise ValueError("tally refuses")


@app.orchestration_trigger(context_name="context")
def use_entity(context: df.DurableOrchestrationContext):
    entity = df.EntityId("tally", context.get_input())
    context.signal_entity(entity, "add", 5)
    total = yield context.call_entity(entity, "add_and_get", 10)
    try:
        yield context.call_entity(entity, "fail")
        error = None
    except Exception as exc:  # noqa: BLE001 - returned for the test to read
        error = str(exc)
    again = yield context.call_entity(entity, "get")
    return {"total": total, "error": error, "again": again}


@app.route(route="start/{name}", methods=["POST"])
@app.durable_client_input(client_name="client")
async def http_start(req: func.HttpRequest, client: df.DurableOrchestrationClient):
    instance_id = await client.start_new(req.route_params["name"], None, req.get_json())
    return client.create_check_status_response(req, instance_id)
