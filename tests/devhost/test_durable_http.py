"""The durable HTTP API as callers see it: management URLs, status codes and bad input."""
from __future__ import annotations

import concurrent.futures
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import azure.functions as func
import pytest
import requests
from azure.durable_functions import OrchestrationRuntimeStatus as Status
from azure.storage.blob import BlobServiceClient

from devhost.durable import DurableEngine
from devhost.durable.errors import HubNameError
from devhost.durable.testing import EngineServer, SyncClient, shared_loop

APP = Path(__file__).parent / "apps" / "durable_basics" / "function_app.py"
EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="durable-http")


@pytest.fixture()
def server(azurite, monkeypatch: pytest.MonkeyPatch) -> Iterator[EngineServer]:
    container = f"dh{uuid.uuid4().hex[:12]}"
    BlobServiceClient.from_connection_string(azurite.connection_string).create_container(
        container)
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    monkeypatch.setenv("DURABLE_TEST_CONTAINER", container)
    srv = EngineServer(APP, azurite.connection_string, f"H{uuid.uuid4().hex[:12]}",
                       EXECUTOR).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture()
def client(server: EngineServer) -> SyncClient:
    return server.client()


def api(server: EngineServer, path: str) -> str:
    return f"{server.base_url}/runtime/webhooks/durabletask/{path}"


def start_via_http_starter(server: EngineServer, name: str, body: object) -> func.HttpResponse:
    """Invoke the app's HTTP starter the way the host does: binding JSON as the client."""
    starter = next(f for f in server.functions if f.get_function_name() == "http_start")
    request = func.HttpRequest(method="POST", url=f"http://localhost:9999/api/start/{name}",
                               body=json.dumps(body).encode(), route_params={"name": name},
                               headers={"Content-Type": "application/json"})
    return server.lt.run(starter.get_user_function()(
        req=request, client=server.api.client_binding_json()))


def poll(url: str, timeout: float = 30.0) -> requests.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = requests.get(url, timeout=10)
        if response.status_code != 202 or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


def test_client_binding_json_has_what_the_sdk_reads(server: EngineServer) -> None:
    binding = json.loads(server.api.client_binding_json())
    assert binding["taskHubName"] == server.engine.hub_name
    assert binding["rpcBaseUrl"] == api(server, "")
    assert binding["baseUrl"] == api(server, "").rstrip("/")
    assert binding["managementUrls"]["id"] == "INSTANCEID"
    assert "/instances/INSTANCEID?" in binding["managementUrls"]["statusQueryGetUri"]
    assert "{functionName}" in binding["creationUrls"]["createNewInstancePostUri"]
    assert binding["requiredQueryStringParameters"].startswith("taskHub=")


def test_check_status_response_urls_work_end_to_end(server: EngineServer) -> None:
    response = start_via_http_starter(server, "chain", "http")
    assert response.status_code == 202
    links = json.loads(response.get_body())
    assert response.headers["Location"] == links["statusQueryGetUri"]
    assert response.headers["Retry-After"]
    # The SDK rewrites the links to the request's origin; point them back at this server.
    status_url = links["statusQueryGetUri"].replace("http://localhost:9999", server.base_url)
    first = requests.get(status_url, timeout=10)
    assert first.status_code in (200, 202)
    if first.status_code == 202:
        assert "Location" in first.headers
    done = poll(status_url)
    assert done.status_code == 200
    body = done.json()
    assert body["runtimeStatus"] == "Completed"
    assert body["output"] == ["hello http", "HELLO HTTP"]
    assert body["input"] == "http"


def test_management_urls_raise_terminate_suspend_resume_and_purge(server: EngineServer,
                                                                   client: SyncClient) -> None:
    links = client.create_http_management_payload("mgmt-1")
    client.start_new("waiter", "mgmt-1")
    client.wait("mgmt-1", lambda s: s.runtime_status == Status.Running)
    suspend = requests.post(links["suspendPostUri"].replace("{text}", "pause"), timeout=10)
    assert suspend.status_code == 202
    client.wait("mgmt-1", lambda s: s.runtime_status == Status.Suspended)
    assert requests.post(links["resumePostUri"].replace("{text}", "on"),
                         timeout=10).status_code == 202
    client.wait("mgmt-1", lambda s: s.runtime_status == Status.Running)
    raised = requests.post(links["sendEventPostUri"].replace("{eventName}", "go"),
                           json={"who": "web"}, timeout=10)
    assert raised.status_code == 202
    done = poll(links["statusQueryGetUri"])
    assert done.status_code == 200
    assert done.json()["output"] == "hello {'who': 'web'}"
    late = requests.post(links["sendEventPostUri"].replace("{eventName}", "go"), json=1,
                         timeout=10)
    assert late.status_code == 410
    assert requests.post(links["terminatePostUri"].replace("{text}", "x"),
                         timeout=10).status_code == 410
    purged = requests.delete(links["purgeHistoryDeleteUri"], timeout=10)
    assert purged.status_code == 200
    assert purged.json() == {"instancesDeleted": 1}
    assert requests.get(links["statusQueryGetUri"], timeout=10).status_code == 404


def test_terminate_url_on_a_running_instance(server: EngineServer, client: SyncClient) -> None:
    links = client.create_http_management_payload("term-1")
    client.start_new("waiter", "term-1")
    response = requests.post(links["terminatePostUri"].replace("{text}", "stop%20now"),
                             timeout=10)
    assert response.status_code == 202
    done = poll(links["statusQueryGetUri"])
    assert done.json()["runtimeStatus"] == "Terminated"
    assert done.json()["output"] == "stop now"


def test_create_and_wait_returns_the_output(server: EngineServer) -> None:
    response = requests.post(api(server, "orchestrators/chain?timeout=20"), json="wait",
                             timeout=30)
    assert response.status_code == 200
    assert response.json() == ["hello wait", "HELLO WAIT"]


def test_unknown_ids_and_names(server: EngineServer) -> None:
    assert requests.get(api(server, "instances/missing"), timeout=10).status_code == 404
    assert requests.post(api(server, "instances/missing/raiseEvent/go"), json=1,
                         timeout=10).status_code == 404
    assert requests.post(api(server, "instances/missing/terminate"),
                         timeout=10).status_code == 404
    assert requests.delete(api(server, "instances/missing"), timeout=10).status_code == 404
    unknown = requests.post(api(server, "orchestrators/nope"), json=None, timeout=10)
    assert unknown.status_code == 400
    assert "'nope' does not exist" in unknown.json()["ExceptionMessage"]
    assert requests.get(api(server, "elsewhere"), timeout=10).status_code == 404


def test_malformed_event_body_is_rejected_and_changes_nothing(server: EngineServer,
                                                              client: SyncClient) -> None:
    client.start_new("waiter", "bad-body")
    client.wait("bad-body", lambda s: s.runtime_status == Status.Running)
    before = client.get_status("bad-body", show_history=True).historyEvents
    response = requests.post(api(server, "instances/bad-body/raiseEvent/go"), data=b"{nope",
                             headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["Message"]
    status = client.get_status("bad-body", show_history=True)
    assert status.runtime_status == Status.Running
    assert status.historyEvents == before
    client.raise_event("bad-body", "go", "fine")
    assert client.wait("bad-body").output == "hello fine"


@pytest.mark.parametrize("path", [
    "instances/" + "x" * 101,
    "instances/%2Fetc%2Fpasswd",
    "instances/a%23b",
    "instances/%40entity",
    "orchestrators/waiter/bad%3Fid",
    "instances/ok/raiseEvent/bad%00name",
])
def test_hostile_ids_and_names_get_400(server: EngineServer, path: str) -> None:
    method = requests.get if path.startswith("instances/") and path.count("/") == 1 else (
        requests.post)
    response = method(api(server, path), timeout=10)
    assert response.status_code == 400
    assert "invalid" in response.json()["Message"]
    assert requests.get(api(server, "instances/"), timeout=10).json() == []


def test_oversized_body_gets_413(server: EngineServer) -> None:
    big = b'"' + b"x" * (5 * 1024 * 1024) + b'"'
    response = requests.post(api(server, "orchestrators/chain/big-1"), data=big, timeout=30)
    assert response.status_code == 413
    assert requests.get(api(server, "instances/big-1"), timeout=10).status_code == 404


def test_oversized_chunked_body_gets_413(server: EngineServer) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'"'
        for _ in range(80):
            yield b"y" * (64 * 1024)
        yield b'"'

    response = requests.post(api(server, "orchestrators/chain/big-2"), data=chunks(),
                             timeout=30)
    assert response.status_code == 413
    assert requests.get(api(server, "instances/big-2"), timeout=10).status_code == 404


def test_bad_query_values_and_methods(server: EngineServer) -> None:
    assert requests.get(api(server, "instances/?runtimeStatus=Sleeping"),
                        timeout=10).status_code == 400
    assert requests.get(api(server, "instances/?createdTimeFrom=yesterday"),
                        timeout=10).status_code == 400
    assert requests.get(api(server, "instances/x?showInput=maybe"),
                        timeout=10).status_code == 400
    assert requests.get(api(server, "instances/?taskHub=OtherHub"),
                        timeout=10).status_code == 400
    assert requests.delete(api(server, "instances/"), timeout=10).status_code == 400
    # HttpApiHandler.HandleRequestAsync: a known route with another method is a bare 404.
    wrong_method = requests.get(api(server, "orchestrators/chain"), timeout=10)
    assert wrong_method.status_code == 404 and wrong_method.content == b""
    assert requests.post(api(server, "instances/x/rewind"), timeout=10).status_code == 404


def test_rewind_is_reported_as_unsupported(server: EngineServer, client: SyncClient) -> None:
    instance_id = client.start_new("failing")
    client.wait(instance_id)
    response = requests.post(api(server, f"instances/{instance_id}/rewind?reason=r"),
                             timeout=10)
    assert response.status_code == 501
    with pytest.raises(Exception, match="not supported"):
        client.rewind(instance_id, "again")
    done = client.start_new("chain", None, "r")
    client.wait(done)
    assert requests.post(api(server, f"instances/{done}/rewind"), timeout=10).status_code == 410


def test_restart_starts_the_same_orchestration_again(client: SyncClient) -> None:
    """HttpApiHandler.HandleRestartInstanceRequestAsync answers CreateCheckStatusResponse for
    the new id; the SDK's `restart` hands that payload back as is (DurableOrchestrationClient.py:
    `return response[1] if response[1] else instance_id`)."""
    client.wait(client.start_new("chain", "again-1", "one"))
    payload = client.restart("again-1")
    assert set(payload) == {"id", "statusQueryGetUri", "sendEventPostUri", "terminatePostUri",
                            "purgeHistoryDeleteUri", "restartPostUri", "suspendPostUri",
                            "resumePostUri"}
    new_id = payload["id"]
    assert new_id != "again-1"
    assert f"/instances/{new_id}?" in payload["statusQueryGetUri"]
    status = client.wait(new_id)
    assert status.output == ["hello one", "HELLO ONE"]
    assert client.restart("again-1", restart_with_new_instance_id=False)["id"] == "again-1"
    assert client.wait("again-1").runtime_status == Status.Completed


def test_hub_name_is_validated(azurite) -> None:
    with pytest.raises(HubNameError, match="task hub name"):
        DurableEngine(functions=[], connection_string=azurite.connection_string,
                      hub_name="bad-hub!",
                      loop=shared_loop().loop, executor=EXECUTOR)


def test_entity_routes(server: EngineServer) -> None:
    assert requests.get(api(server, "entities/tally/none-yet"), timeout=10).status_code == 404
    assert requests.post(api(server, "entities/tally/k"), json=1,
                         timeout=10).status_code == 400  # no op
    assert requests.post(api(server, "entities/nosuch/k?op=add"), json=1,
                         timeout=10).status_code == 400
    assert requests.post(api(server, "entities/ta%40lly/k?op=add"), json=1,
                         timeout=10).status_code == 400
    accepted = requests.post(api(server, "entities/tally/web?op=add"), json=7, timeout=10)
    assert accepted.status_code == 202
    deadline = time.monotonic() + 30
    while (got := requests.get(api(server, "entities/tally/web"), timeout=10)).status_code != 200:
        assert time.monotonic() < deadline, "entity never got state"
        time.sleep(0.05)
    assert got.json() == 7


def test_rpc_port_is_17071_first_then_the_extensions_range(caplog) -> None:
    """Durable extension `LocalHttpListener.StartAsync`: port 17071 first, then random ports of
    30000-30999, ten attempts."""
    import socket  # noqa: PLC0415

    from devhost.host import RPC_DEFAULT_PORT, RPC_PORTS, bind_rpc_socket  # noqa: PLC0415

    try:
        holder = socket.create_server(("127.0.0.1", RPC_DEFAULT_PORT), reuse_port=False)
    except OSError:
        holder = None  # something on this machine holds it already: the same situation
    try:
        with caplog.at_level("WARNING", logger="devhost"):
            sock = bind_rpc_socket()
        try:
            assert sock.getsockname()[1] in RPC_PORTS
            assert f"failed to open local port {RPC_DEFAULT_PORT}" in caplog.text
        finally:
            sock.close()
    finally:
        if holder is not None:
            holder.close()
