"""One healthy HTTP function beside three the host cannot bind: a queue trigger whose queue
name names an app setting that is not set, an HTTP function with an output binding devhost
has no extension for, and one whose route template does not parse."""
import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="ok")
def ok(req: func.HttpRequest) -> str:
    return "ok"


@app.queue_trigger(arg_name="msg", queue_name="%QUEUE_NOT_SET_ANYWHERE%",
                   connection="AzureWebJobsStorage")
def unresolved(msg: func.QueueMessage) -> None:
    raise AssertionError("never indexed")


@app.route(route="hub")
@app.event_hub_output(arg_name="out", event_hub_name="h", connection="HUB")
def unsupported(req: func.HttpRequest, out: func.Out[str]) -> str:
    return "never indexed"


@app.route(route="items/{id:nosuchconstraint}")
def bad_route(req: func.HttpRequest) -> str:
    return "never indexed"
