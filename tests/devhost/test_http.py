"""HTTP triggers through a running devhost: auth levels, templates, errors, bindings."""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient, TextBase64DecodePolicy

from devhost.testing import ThreadedHost, running_host

MASTER = "test-master-key"
FKEY = "test-function-key"


@pytest.fixture()
def http_host(apps: Path, host_env: dict[str, str], suffix: str) -> Iterator[ThreadedHost]:
    env = {**host_env, "OUT_QUEUE": f"orders-{suffix}", "OUT_CONTAINER": f"orders-{suffix}",
           "OUT_TABLE": f"orders{suffix}"}
    with running_host(apps / "http_app", env) as threaded:
        yield threaded


def get(host: ThreadedHost, path: str, method: str = "GET", **kwargs) -> requests.Response:
    return requests.request(method, host.host.base_url + path, timeout=30, **kwargs)


def test_anonymous_route_gets_route_params_and_query(http_host: ThreadedHost) -> None:
    response = get(http_host, "/api/public/alice?q=42")
    assert response.status_code == 200
    assert response.json() == {"hello": "alice", "q": "42"}


def test_function_level_needs_function_or_master_key(http_host: ThreadedHost) -> None:
    assert get(http_host, "/api/items/7").status_code == 401
    assert get(http_host, "/api/items/7?code=wrong").status_code == 401
    assert get(http_host, "/api/items/7", headers={"x-functions-key": "wrong"}).status_code == 401
    assert get(http_host, f"/api/items/7?code={FKEY}").json()["id"] == "7"
    assert get(http_host, "/api/items/7", headers={"x-functions-key": MASTER}).status_code == 200
    unauthorized = get(http_host, "/api/items/7")
    assert unauthorized.content == b""  # the host's 401 has no body


def test_admin_level_needs_the_master_key(http_host: ThreadedHost) -> None:
    assert get(http_host, f"/api/admin-only?code={FKEY}").status_code == 401
    assert get(http_host, "/api/admin-only").status_code == 401
    response = get(http_host, f"/api/admin-only?code={MASTER}")
    assert response.status_code == 200
    assert response.content == b"\x00admin"
    assert response.headers["content-type"] == "application/octet-stream"


def test_route_constraints_pick_the_matching_function(http_host: ThreadedHost) -> None:
    guid = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
    assert get(http_host, f"/api/items/12?code={FKEY}").json()["kind"] == "int"
    assert get(http_host, f"/api/items/{guid}?code={FKEY}").json() == {"kind": "guid", "id": guid}
    assert get(http_host, f"/api/items/abc?code={FKEY}").status_code == 404
    assert get(http_host, "/api/public/al1ce").status_code == 404  # alpha constraint
    created = get(http_host, f"/api/items/new?code={FKEY}", "POST", json={"a": 1})
    assert created.status_code == 201
    assert created.json() == {"created": {"a": 1}, "ct": "application/json"}
    assert created.headers["X-Sample"] == "yes"


def test_catch_all_and_optional_segments(http_host: ThreadedHost) -> None:
    assert get(http_host, f"/api/files/a/b/c%20d.txt?code={FKEY}").text == "path=a/b/c d.txt"
    assert get(http_host, "/api/public/J%C3%B6rg").status_code == 404  # not alpha
    assert get(http_host, f"/api/items/1%2F2?code={FKEY}").status_code == 404
    assert get(http_host, f"/api/pages?code={FKEY}").json() == {"page": None}
    assert get(http_host, f"/api/pages/3?code={FKEY}").json() == {"page": "3"}


def test_unknown_route_is_a_bare_404_and_wrong_method_a_405(http_host: ThreadedHost) -> None:
    """No route: the host's 404 with no body. A method the route does not list: 405 with
    `Allow` (a known difference: the host answers 404; see docs/devhost.md)."""
    missing = get(http_host, "/api/nope")
    assert (missing.status_code, missing.content) == (404, b"")
    outside = get(http_host, "/elsewhere")
    assert (outside.status_code, outside.content) == (404, b"")
    wrong = get(http_host, f"/api/items/5?code={FKEY}", "PUT")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "MethodNotAllowed"
    assert wrong.headers["Allow"] == "DELETE, GET"  # both routes that match /items/5
    assert get(http_host, f"/api/items/5?code={FKEY}", "DELETE").json()["method"] == "DELETE"


def test_unhandled_exception_gives_500_without_details(http_host: ThreadedHost) -> None:
    response = get(http_host, f"/api/boom?code={FKEY}")
    assert response.status_code == 500
    assert "secret internal detail" not in response.text
    assert "Traceback" not in response.text
    assert response.content == b""  # the host's 500 for a failed invocation has no body


def test_async_function_with_context_works(http_host: ThreadedHost) -> None:
    response = get(http_host, f"/api/nothing?code={FKEY}")
    assert response.status_code == 204


@pytest.mark.parametrize("kind", ["bytes", "dict", "none"])
def test_values_the_worker_cannot_encode_fail_the_call(http_host: ThreadedHost,
                                                       kind: str) -> None:
    """azure-functions `http.py HttpResponseConverter.encode` takes only HttpResponse or str;
    the worker's `bindings/meta.py get_datum` turns anything else into a TypeError, so the
    invocation fails and the host answers 500."""
    assert get(http_host, f"/api/returns/{kind}").status_code == 500
    text = get(http_host, "/api/returns/str")
    assert (text.status_code, text.text) == (200, "text")


def test_unset_http_output_gives_200(http_host: ThreadedHost) -> None:
    response = get(http_host, "/api/unset-out")
    assert (response.status_code, response.content) == (200, b"")


def test_cookies_are_separate_set_cookie_headers(http_host: ThreadedHost) -> None:
    """The worker sends each `Set-Cookie` as an RpcHttpCookie (datumdef.py
    `parse_to_rpc_http_cookie_list`); the host writes one header per cookie."""
    response = get(http_host, "/api/cookies")
    raw = response.raw.headers.getlist("Set-Cookie")
    assert len(raw) == 2 and raw[0].startswith("a=1") and raw[1].startswith("b=2")
    assert response.cookies["a"] == "1" and response.cookies["b"] == "2"


def test_trace_context_has_the_workers_names(http_host: ThreadedHost) -> None:
    """azure_functions_worker/bindings/tracecontext.py: `Traceparent`, `Tracestate`,
    `Attributes` alongside the snake_case names; a W3C traceparent."""
    body = get(http_host, "/api/trace").json()
    assert body["same"] == [True, True, True]
    assert re.match(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$", body["traceparent"])


def test_output_bindings_are_written_and_read_back(http_host: ThreadedHost, suffix: str,
                                                   host_env: dict[str, str]) -> None:
    response = get(http_host, f"/api/orders/o1?code={FKEY}", "POST", data="hello order")
    assert response.status_code == 202
    assert response.text == "stored"
    conn = host_env["AzureWebJobsStorage"]
    blob = BlobServiceClient.from_connection_string(conn).get_blob_client(
        f"orders-{suffix}", "orders/o1.json")
    assert blob.download_blob().readall() == b"hello order"
    queue = QueueClient.from_connection_string(conn, f"orders-{suffix}",
                                               message_decode_policy=TextBase64DecodePolicy())
    assert [json.loads(m.content) for m in queue.receive_messages()] == [{"order": "o1"}]
    read = get(http_host, f"/api/orders/o1?code={FKEY}")
    assert read.json() == {"doc": "hello order",
                           # a JSON array even for one entity (partitionKey + rowKey), as the
                           # host binds table input for out-of-process workers
                           "row": [{"PartitionKey": "orders", "RowKey": "o1", "size": 11}]}


def test_failed_invocation_writes_no_outputs(http_host: ThreadedHost, suffix: str,
                                             host_env: dict[str, str]) -> None:
    response = get(http_host, f"/api/orders/o9?code={FKEY}&fail=1", "POST", data="x")
    assert response.status_code == 500
    assert get(http_host, f"/api/orders/o9?code={FKEY}").status_code == 404
    queue = QueueClient.from_connection_string(host_env["AzureWebJobsStorage"],
                                               f"orders-{suffix}")
    assert not queue_exists_with_messages(queue)


def queue_exists_with_messages(queue: QueueClient) -> bool:
    try:
        return bool(list(queue.peek_messages()))
    except ResourceNotFoundError:
        return False


def test_route_prefix_from_host_json(apps: Path, host_env: dict[str, str]) -> None:
    with running_host(apps / "prefix_app", host_env) as threaded:
        base = threaded.host.base_url
        assert requests.get(f"{base}/v1/ping", timeout=30).text == "pong"
        assert requests.get(f"{base}/api/ping", timeout=30).status_code == 404
        # local.settings.json Host.CORS names one allowed origin
        allowed = requests.get(f"{base}/v1/ping", headers={"Origin": "http://allowed.example"},
                               timeout=30)
        assert allowed.headers["Access-Control-Allow-Origin"] == "http://allowed.example"
        other = requests.get(f"{base}/v1/ping", headers={"Origin": "http://evil.example"},
                             timeout=30)
        assert "Access-Control-Allow-Origin" not in other.headers
        preflight = requests.options(f"{base}/v1/ping", timeout=30, headers={
            "Origin": "http://allowed.example", "Access-Control-Request-Method": "GET"})
        assert preflight.status_code == 204
        assert "GET" in preflight.headers["Access-Control-Allow-Methods"]


def test_admin_invoke_refuses_http_functions(http_host: ThreadedHost) -> None:
    response = get(http_host, "/admin/functions/public_hello", "POST", json={"input": "x"},
                   headers={"x-functions-key": MASTER})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "BadRequest"


def test_oversized_body_is_refused(apps: Path, host_env: dict[str, str]) -> None:
    env = {**host_env, "FUNCTIONS_REQUEST_BODY_SIZE_LIMIT": "2048"}
    with running_host(apps / "http_app", env) as threaded:
        url = f"{threaded.host.base_url}/api/items/new?code={FKEY}"
        too_big = requests.post(url, data=b"x" * 5000, timeout=30)
        assert too_big.status_code == 413
        assert too_big.json()["error"]["code"] == "PayloadTooLarge"
        assert requests.post(url, json={"ok": 1}, timeout=30).status_code == 201


def test_json_nested_100000_deep_reaches_the_function(http_host: ThreadedHost) -> None:
    """The host hands the body to the function even when it is too deep to parse for binding
    data (Json.NET stops at its depth limit; it never fails the request): no text/plain 500."""
    deep = b"[" * 100_000 + b"]" * 100_000
    response = get(http_host, "/api/echo/size", method="POST", data=deep,
                   headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text[:200]
    assert response.json() == {"bytes": len(deep)}


def test_root_is_the_hosts_landing_page(http_host: ThreadedHost) -> None:
    """azure-functions-host's HomeController: `/` answers 200 with an HTML "up and running"
    page, no key needed."""
    response = get(http_host, "/")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert "is up and running" in response.text
