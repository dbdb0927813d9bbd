"""Disabled-functions sample app: pairs of twins that differ only in name, so a test can
disable one of each pair by app setting and compare it with the other.

Timers and blob triggers write `%OUT_CONTAINER%/<function>/<random>`; the HTTP twins answer
their own name.
"""
import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.timer_trigger(arg_name="timer", schedule="*/1 * * * * *", run_on_startup=True,
                   use_monitor=False)
@app.blob_output(arg_name="out", path="%OUT_CONTAINER%/tick_on/{rand-guid}",
                 connection="AzureWebJobsStorage")
def tick_on(timer: func.TimerRequest, out: func.Out[str]) -> None:
    out.set("tick")


@app.timer_trigger(arg_name="timer", schedule="*/1 * * * * *", run_on_startup=True,
                   use_monitor=False)
@app.blob_output(arg_name="out", path="%OUT_CONTAINER%/tick_off/{rand-guid}",
                 connection="AzureWebJobsStorage")
def tick_off(timer: func.TimerRequest, out: func.Out[str]) -> None:
    out.set("tick")


@app.blob_trigger(arg_name="blob", path="%OUT_CONTAINER%-in/{name}",
                  connection="AzureWebJobsStorage")
@app.blob_output(arg_name="out", path="%OUT_CONTAINER%/drop_on/{name}",
                 connection="AzureWebJobsStorage")
def drop_on(blob: func.InputStream, out: func.Out[bytes]) -> None:
    out.set(blob.read())


@app.blob_trigger(arg_name="blob", path="%OUT_CONTAINER%-in/{name}",
                  connection="AzureWebJobsStorage")
@app.blob_output(arg_name="out", path="%OUT_CONTAINER%/drop_off/{name}",
                 connection="AzureWebJobsStorage")
def drop_off(blob: func.InputStream, out: func.Out[bytes]) -> None:
    out.set(blob.read())


@app.route(route="web_on")
def web_on(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("web_on")


@app.route(route="web_off")
def web_off(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("web_off")
