"""A durable app whose callers never touch the management API: starter, event raiser and
status reader all go through the `durableClient` binding (the SDK's RPC calls)."""
import json

import azure.durable_functions as df
import azure.functions as func

app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="start/{instance}", methods=["POST"])
@app.durable_client_input(client_name="client")
async def start(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    instance_id = await client.start_new("wait_for_go", req.route_params["instance"],
                                         req.get_json())
    return client.create_check_status_response(req, instance_id)


@app.route(route="go/{instance}", methods=["POST"])
@app.durable_client_input(client_name="client")
async def go(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    await client.raise_event(req.route_params["instance"], "go", "now")
    return func.HttpResponse(status_code=202)


@app.route(route="state/{instance}", methods=["GET"])
@app.durable_client_input(client_name="client")
async def state(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    status = await client.get_status(req.route_params["instance"])
    return func.HttpResponse(json.dumps({"runtimeStatus": status.runtime_status.value,
                                         "output": status.output}),
                             mimetype="application/json")


@app.route(route="count/{key}", methods=["POST"])
@app.durable_client_input(client_name="client")
async def count(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    await client.signal_entity(df.EntityId("counter", req.route_params["key"]), "add", 1)
    return func.HttpResponse(status_code=202)


@app.orchestration_trigger(context_name="context")
def wait_for_go(context: df.DurableOrchestrationContext):
    got = yield context.wait_for_external_event("go")
    return {"input": context.get_input(), "event": got}


@app.entity_trigger(context_name="context")
def counter(context: df.DurableEntityContext) -> None:
    context.set_state((context.get_state(lambda: 0) or 0) + (context.get_input() or 0))
