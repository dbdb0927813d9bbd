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
def pages(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(json.dumps({"page": req.route_params.get("page")}),
                             mimetype="application/json")


@app.route(route="admin-only", methods=["GET"], auth_level=func.AuthLevel.ADMIN)
def admin_only(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(b"\x00admin", mimetype="application/octet-stream")


@app.route(route="returns/{kind}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def returns(req: func.HttpRequest) -> func.HttpResponse:
    """Values the worker cannot send as an HTTP answer (its call fails): bytes, dict, None."""
    kind = req.route_params["kind"]
    return {"bytes": b"raw", "dict": {"a": 1}, "none": None}.get(kind, "text")  # type: ignore


@app.route(route="unset-out", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS,
           binding_arg_name="answer")
def unset_out(req: func.HttpRequest, answer: func.Out[func.HttpResponse]) -> None:
    """An HTTP output binding the function never sets."""


@app.route(route="cookies", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def cookies(req: func.HttpRequest) -> func.HttpResponse:
    response = func.HttpResponse("cookies")
    response.headers.add("Set-Cookie", "a=1; Path=/")
    response.headers.add("Set-Cookie", "b=2; HttpOnly")
    return response


@app.route(route="trace", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def trace(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    tc = context.trace_context
    return func.HttpResponse(json.dumps({
        "same": [tc.Traceparent == tc.trace_parent, tc.Tracestate == tc.trace_state,
                 tc.Attributes == tc.attributes],
        "traceparent": tc.trace_parent}), mimetype="application/json")


@app.route(route="boom", methods=["GET"])
def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("secret internal detail")


@app.route(route="nothing", methods=["GET"])
async def nothing(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    assert context.function_name == "nothing"
    return func.HttpResponse(status_code=204)


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
