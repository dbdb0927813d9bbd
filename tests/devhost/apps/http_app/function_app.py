"""HTTP sample app for devhost tests: auth levels, route templates, return types, bindings."""
import json

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.route(route="public/{name:alpha}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def public_hello(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(json.dumps({"hello": req.route_params["name"],
                                         "q": req.params.get("q")}),
                             mimetype="application/json")


@app.route(route="items/{id:int}", methods=["GET", "DELETE"])
def item_by_id(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(json.dumps({"kind": "int", "id": req.route_params["id"],
                                         "method": req.method}), mimetype="application/json")


@app.route(route="items/{id:guid}", methods=["GET"])
def item_by_guid(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(json.dumps({"kind": "guid", "id": req.route_params["id"]}),
                             mimetype="application/json")


@app.route(route="items/new", methods=["POST"])
def item_create(req: func.HttpRequest) -> func.HttpResponse:
    body = req.get_json()
    return func.HttpResponse(json.dumps({"created": body, "ct": req.headers.get("content-type")}),
                             status_code=201, mimetype="application/json",
                             headers={"X-Sample": "yes"})


@app.route(route="files/{*path}", methods=["GET"])
def files(req: func.HttpRequest) -> str:
    return "path=" + req.route_params.get("path", "")


@app.route(route="pages/{page?}", methods=["GET"])
def pages(req: func.HttpRequest) -> dict:
    return {"page": req.route_params.get("page")}


@app.route(route="admin-only", methods=["GET"], auth_level=func.AuthLevel.ADMIN)
def admin_only(req: func.HttpRequest) -> bytes:
    return b"\x00admin"


@app.route(route="boom", methods=["GET"])
def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("secret internal detail")


@app.route(route="nothing", methods=["GET"])
async def nothing(req: func.HttpRequest, context: func.Context) -> None:
    assert context.function_name == "nothing"


@app.route(route="orders/{id}", methods=["POST"])
@app.queue_output(arg_name="msg", queue_name="%OUT_QUEUE%", connection="AzureWebJobsStorage")
@app.blob_output(arg_name="doc", path="%OUT_CONTAINER%/orders/{id}.json",
                 connection="AzureWebJobsStorage")
@app.table_output(arg_name="row", table_name="%OUT_TABLE%", connection="AzureWebJobsStorage",
                  partition_key="orders")
def order(req: func.HttpRequest, msg: func.Out[str], doc: func.Out[str],
          row: func.Out[str]) -> func.HttpResponse:
    order_id = req.route_params["id"]
    payload = req.get_body().decode()
    msg.set(json.dumps({"order": order_id}))
    doc.set(payload)
    row.set(json.dumps({"RowKey": order_id, "size": len(payload)}))
    if req.params.get("fail"):
        raise ValueError("fails after setting outputs")
    return func.HttpResponse("stored", status_code=202)


@app.route(route="orders/{id}", methods=["GET"])
@app.blob_input(arg_name="doc", path="%OUT_CONTAINER%/orders/{id}.json",
                connection="AzureWebJobsStorage")
@app.table_input(arg_name="row", table_name="%OUT_TABLE%", partition_key="orders",
                 row_key="{id}", connection="AzureWebJobsStorage")
def order_get(req: func.HttpRequest, doc: bytes, row: str) -> func.HttpResponse:
    if doc is None:
        return func.HttpResponse("missing", status_code=404)
    return func.HttpResponse(json.dumps({"doc": doc.decode(), "row": json.loads(row)}),
                             mimetype="application/json")


@app.route(route="echo/size", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def echo_size(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(json.dumps({"bytes": len(req.get_body())}),
                             mimetype="application/json")
