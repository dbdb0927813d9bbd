"""Sample app for the kill test: an HTTP starter and a fan-out whose activities record each
execution as a blob, slowly enough that a kill lands while some are in flight."""
import os
import time
import uuid

import azure.durable_functions as df
import azure.functions as func
from azure.storage.blob import ContainerClient

app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="start/{instance_id}", methods=["POST"])
@app.durable_client_input(client_name="client")
async def start_http(req: func.HttpRequest, client: df.DurableOrchestrationClient):
    instance_id = req.route_params["instance_id"]
    await client.start_new("fan", instance_id, int(req.params.get("n", "20")))
    return client.create_check_status_response(req, instance_id)


@app.orchestration_trigger(context_name="context")
def fan(context: df.DurableOrchestrationContext):
    n = context.get_input()
    first = yield context.task_all([context.call_activity("square", i) for i in range(n // 2)])
    second = yield context.task_all([context.call_activity("square", i)
                                     for i in range(n // 2, n)])
    return {"results": first + second, "sum": sum(first) + sum(second)}


@app.activity_trigger(input_name="value")
def square(value: int) -> int:
    time.sleep(0.2)
    container = ContainerClient.from_connection_string(os.environ["AzureWebJobsStorage"],
                                                       os.environ["KILL_TEST_CONTAINER"])
    container.upload_blob(f"{value}/{uuid.uuid4().hex}", b"")
    return value * value
