"""An HTTP function that writes a queue message, and the queue trigger of the same host that
copies each message to a blob: the write must wake the trigger out of its backoff."""
import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="enqueue/{text}", methods=["POST"])
@app.queue_output(arg_name="out", queue_name="%WAKE_QUEUE%", connection="AzureWebJobsStorage")
def enqueue(req: func.HttpRequest, out: func.Out[str]) -> str:
    out.set(req.route_params["text"])
    return "queued"


@app.queue_trigger(arg_name="msg", queue_name="%WAKE_QUEUE%", connection="AzureWebJobsStorage")
@app.blob_output(arg_name="copy", path="%WAKE_CONTAINER%/{queueTrigger}",
                 connection="AzureWebJobsStorage")
def copy(msg: str, copy: func.Out[str]) -> None:
    copy.set(msg)
