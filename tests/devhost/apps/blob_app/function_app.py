"""Blob trigger sample app: a polled trigger and an Event Grid one, each writing a copy.

Every invocation writes `%OUT_CONTAINER%/<source>/<name>/<etag>` so tests can count fires;
a blob whose content starts with `fail` raises.
"""
import json

import azure.functions as func

app = func.FunctionApp()


def _record(blob: func.InputStream, name: str) -> str:
    data = blob.read()
    if data.startswith(b"fail"):
        raise ValueError("asked to fail")
    return json.dumps({"name": name, "blob": blob.name, "length": blob.length,
                       "uri": blob.uri, "data": data.decode()})


@app.blob_trigger(arg_name="blob", path="%IN_CONTAINER%/incoming/{name}",
                  connection="AzureWebJobsStorage")
@app.blob_output(arg_name="out", path="%OUT_CONTAINER%/polled/{name}/{rand-guid}",
                 connection="AzureWebJobsStorage")
def polled_blob(blob: func.InputStream, out: func.Out[str]) -> None:
    out.set(_record(blob, blob.name.split("/", 2)[2]))


@app.blob_trigger(arg_name="blob", path="%EG_CONTAINER%/{name}",
                  connection="AzureWebJobsStorage", source="EventGrid")
@app.blob_output(arg_name="out", path="%OUT_CONTAINER%/eventgrid/{name}/{rand-guid}",
                 connection="AzureWebJobsStorage")
def eventgrid_blob(blob: func.InputStream, out: func.Out[str]) -> None:
    out.set(_record(blob, blob.name.split("/", 1)[1]))
