"""Blob trigger and table bindings, each function showing the host what it bound.

`report` copies what it got for `reports/{name}.csv` to `%OUT_CONTAINER%/{name}.json`;
`top_rows`, `either_row` and `put_row` read and write table `%TABLE%` over HTTP.
"""
import json

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.blob_trigger(arg_name="blob", path="%IN_CONTAINER%/reports/{name}.csv",
                  connection="AzureWebJobsStorage")
@app.blob_output(arg_name="out", path="%OUT_CONTAINER%/{name}.json",
                 connection="AzureWebJobsStorage")
def report(blob: func.InputStream, out: func.Out[str]) -> None:
    out.set(json.dumps({"name": blob.name, "uri": blob.uri, "length": blob.length,
                        "metadata": blob.metadata,
                        "content_type": (blob.blob_properties or {}).get("ContentType"),
                        "data": blob.read().decode()}))


@app.route(route="rows/{part}", methods=["GET"])
@app.table_input(arg_name="rows", table_name="%TABLE%", partition_key="{part}",
                 filter="n gt 1", take=2, connection="AzureWebJobsStorage")
def top_rows(req: func.HttpRequest, rows: str) -> func.HttpResponse:
    return func.HttpResponse(rows, mimetype="application/json")


@app.route(route="either/{part}", methods=["GET"])
@app.table_input(arg_name="rows", table_name="%TABLE%", partition_key="{part}",
                 filter="n eq 2 or n eq 9", connection="AzureWebJobsStorage")
def either_row(req: func.HttpRequest, rows: str) -> func.HttpResponse:
    return func.HttpResponse(rows, mimetype="application/json")


@app.route(route="rows/{part}/{row}", methods=["POST"])
@app.table_output(arg_name="row", table_name="%TABLE%", partition_key="{part}",
                  row_key="{row}", connection="AzureWebJobsStorage")
def put_row(req: func.HttpRequest, row: func.Out[str]) -> str:
    row.set(req.get_body().decode())
    return "stored"
