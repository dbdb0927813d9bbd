"""Blob triggers: polling with receipts (restart, overwrite, poison) and the Event Grid webhook."""
from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerClient
from azure.storage.queue import QueueClient

from devhost.testing import running_host

MASTER = "test-master-key"


@pytest.fixture()
def blob_env(host_env: dict[str, str], suffix: str) -> dict[str, str]:
    service = BlobServiceClient.from_connection_string(host_env["AzureWebJobsStorage"])
    for name in (f"in-{suffix}", f"eg-{suffix}", f"out-{suffix}"):
        service.create_container(name)
    return {**host_env, "IN_CONTAINER": f"in-{suffix}", "EG_CONTAINER": f"eg-{suffix}",
            "OUT_CONTAINER": f"out-{suffix}"}


def container(env: dict[str, str], key: str) -> ContainerClient:
    return BlobServiceClient.from_connection_string(
        env["AzureWebJobsStorage"]).get_container_client(env[key])


def fires(env: dict[str, str], prefix: str) -> list[dict[str, Any]]:
    out = container(env, "OUT_CONTAINER")
    return [json.loads(out.download_blob(b.name).readall())
            for b in out.list_blobs(name_starts_with=prefix)]


def test_polled_blob_fires_once_and_again_on_overwrite(apps: Path, blob_env: dict[str, str],
                                                       eventually: Callable[..., Any]) -> None:
    incoming = container(blob_env, "IN_CONTAINER")
    incoming.upload_blob("incoming/a.txt", b"first")
    incoming.upload_blob("ignored/b.txt", b"not under the path pattern")
    with running_host(apps / "blob_app", blob_env) as threaded:
        got = eventually(lambda: fires(blob_env, "polled/"), what="first fire")
        assert got[0]["name"] == "a.txt"
        assert got[0]["blob"] == f"{blob_env['IN_CONTAINER']}/incoming/a.txt"
        assert got[0]["data"] == "first" and got[0]["length"] == 5
        # two more scans change nothing
        for poller in threaded.host.blob_pollers:
            threaded.call(poller.scan_once())
            threaded.call(poller.scan_once())
        assert len(fires(blob_env, "polled/")) == 1
        incoming.upload_blob("incoming/a.txt", b"second", overwrite=True)
        again = eventually(lambda: [f for f in fires(blob_env, "polled/")
                                    if f["data"] == "second"], what="fire after overwrite")
        assert len(again) == 1
    assert len(fires(blob_env, "polled/")) == 2


def test_a_slow_listing_spaces_the_scans_out(apps: Path, blob_env: dict[str, str]) -> None:
    incoming = container(blob_env, "IN_CONTAINER")
    for i in range(20):
        incoming.upload_blob(f"ignored/{i}.txt", b"x")
    with running_host(apps / "blob_app", blob_env) as threaded:
        poller = threaded.host.blob_pollers[0]
        threaded.call(poller.scan_once())
        assert poller.last_list_seconds > 0  # every scan times its listing
        assert poller.pause() == max(poller.interval,
                                     poller.LIST_PAUSE_FACTOR * poller.last_list_seconds)
        poller.last_list_seconds = poller.interval  # listing as long as the interval itself
        assert poller.pause() == poller.LIST_PAUSE_FACTOR * poller.interval


def test_restart_does_not_fire_handled_blobs_again(apps: Path, blob_env: dict[str, str],
                                                   eventually: Callable[..., Any]) -> None:
    incoming = container(blob_env, "IN_CONTAINER")
    incoming.upload_blob("incoming/one.txt", b"1")
    incoming.upload_blob("incoming/two.txt", b"2")
    with running_host(apps / "blob_app", blob_env):
        eventually(lambda: len(fires(blob_env, "polled/")) == 2, what="two fires")
    with running_host(apps / "blob_app", blob_env) as threaded:
        poller = threaded.host.blob_pollers[0]
        assert threaded.call(poller.scan_once()) == 0
        incoming.upload_blob("incoming/three.txt", b"3")
        eventually(lambda: len(fires(blob_env, "polled/")) == 3, what="third fire")
    names = sorted(f["name"] for f in fires(blob_env, "polled/"))
    assert names == ["one.txt", "three.txt", "two.txt"]


def test_failing_blob_goes_to_the_poison_queue(apps: Path, blob_env: dict[str, str],
                                               eventually: Callable[..., Any]) -> None:
    incoming = container(blob_env, "IN_CONTAINER")
    incoming.upload_blob("incoming/bad.txt", b"fail please")
    poison = QueueClient.from_connection_string(blob_env["AzureWebJobsStorage"],
                                                "webjobs-blobtrigger-poison")

    def poisoned() -> list[dict[str, Any]]:
        try:
            messages = poison.peek_messages(max_messages=32)
        except ResourceNotFoundError:  # the queue appears on first poison
            return []
        found = [json.loads(base64.b64decode(m.content)) for m in messages]
        return [m for m in found if m["ContainerName"] == blob_env["IN_CONTAINER"]]

    with running_host(apps / "blob_app", blob_env):
        found = eventually(poisoned, what="poison message")
    assert found[0]["BlobName"] == "incoming/bad.txt"
    assert found[0]["FunctionId"] == "Host.Functions.polled_blob"
    assert fires(blob_env, "polled/") == []


def post_event(base: str, payload: Any, key: str = MASTER, function: str = "eventgrid_blob",
               headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(f"{base}/runtime/webhooks/blobs",
                         params={"functionName": f"Host.Functions.{function}", "code": key},
                         json=payload, headers=headers or {"aeg-event-type": "Notification"},
                         timeout=30)


def test_event_grid_webhook_validation_and_blob_created(apps: Path, blob_env: dict[str, str],
                                                        eventually: Callable[..., Any]) -> None:
    eg = container(blob_env, "EG_CONTAINER")
    eg.upload_blob("dir/x.csv", b"a,b")
    url = eg.get_blob_client("dir/x.csv").url
    with running_host(apps / "blob_app", blob_env) as threaded:
        base = threaded.host.base_url
        validation = post_event(base, [{
            "id": "1", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "data": {"validationCode": "abc-123"}}],
            headers={"aeg-event-type": "SubscriptionValidation"})
        assert validation.status_code == 200
        assert validation.json() == {"validationResponse": "abc-123"}
        event = {"id": "2", "eventType": "Microsoft.Storage.BlobCreated",
                 "subject": "/blobServices/default/containers/x", "data": {"url": url}}
        assert post_event(base, [event]).status_code == 202
        got = eventually(lambda: fires(blob_env, "eventgrid/"), what="event grid fire")
        assert got[0]["name"] == "dir/x.csv" and got[0]["data"] == "a,b"
        # the same event again is a no-op (receipt); the poller never sees this container
        assert post_event(base, [event]).status_code == 202
        threaded.call(threaded.host.wait_idle())
        assert len(fires(blob_env, "eventgrid/")) == 1


def test_event_grid_webhook_refuses_bad_calls(apps: Path, blob_env: dict[str, str]) -> None:
    with running_host(apps / "blob_app", blob_env) as threaded:
        base = threaded.host.base_url
        assert post_event(base, [], key="wrong").status_code == 401
        assert post_event(base, [], function="nope").status_code == 404
        assert post_event(base, [], function="polled_blob").status_code == 404
        bad = requests.post(f"{base}/runtime/webhooks/blobs",
                            params={"functionName": "Host.Functions.eventgrid_blob",
                                    "code": MASTER}, data=b"{not json", timeout=30)
        assert bad.status_code == 400
        assert bad.json()["error"]["code"] == "BadRequest"
        other = {"eventType": "Microsoft.Storage.BlobCreated",
                 "data": {"url": "http://127.0.0.1:1/devstoreaccount1/elsewhere/x"}}
        assert post_event(base, [other]).status_code == 202
        threaded.call(threaded.host.wait_idle())
    assert fires(blob_env, "eventgrid/") == []
