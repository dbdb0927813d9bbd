"""Durable functions called by names that differ from theirs only in case, as the host
allows (durable-extension `FunctionName.cs`: names compare OrdinalIgnoreCase)."""
import json
from datetime import timedelta

import azure.durable_functions as df
import azure.functions as func

app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="start", methods=["POST"])
@app.durable_client_input(client_name="client")
async def start(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    instance_id = await client.start_new("My_Orchestrator", None, "ada")
    return client.create_check_status_response(req, instance_id)


@app.route(route="legacy-client", methods=["GET"])
@app.generic_input_binding(arg_name="client", type="orchestrationClient")
def legacy_client(req: func.HttpRequest, client: str) -> func.HttpResponse:
    """The Durable 1.x binding name `orchestrationClient` still binds (as `durableClient`)."""
    return func.HttpResponse(json.loads(client)["taskHubName"])


@app.orchestration_trigger(context_name="context")
def my_orchestrator(context: df.DurableOrchestrationContext):
    greeting = yield context.call_activity("Hello", context.get_input())
    child = yield context.call_sub_orchestrator("Child_Flow", greeting)
    yield context.create_timer(context.current_utc_datetime + timedelta(seconds=1))
    total = yield context.call_entity(df.EntityId("Tally", "k"), "add", 2)
    return {"greeting": greeting, "child": child, "total": total}


@app.orchestration_trigger(context_name="context")
def child_flow(context: df.DurableOrchestrationContext):
    shouted = yield context.call_activity("SHOUT", context.get_input())
    return shouted


@app.activity_trigger(input_name="name")
def hello(name: str) -> str:
    return f"hello {name}"


@app.activity_trigger(input_name="text")
def shout(text: str) -> str:
    return text.upper()


@app.entity_trigger(context_name="context")
def tally(context: df.DurableEntityContext) -> None:
    value = (context.get_state(lambda: 0) or 0) + context.get_input()
    context.set_state(value)
    context.set_result(value)
