"""Queue triggers: base64 batches, a bad message alone, retries and the poison queue."""
from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import ContainerClient
from azure.storage.queue import QueueClient

from devhost.queues import QueueWatcher
from devhost.testing import running_host

MASTER = "test-master-key"


@pytest.fixture()
def queue_env(host_env: dict[str, str], suffix: str) -> dict[str, str]:
    env = {**host_env, "IN_QUEUE": f"work-{suffix}", "OUT_QUEUE": f"done-{suffix}"}
    raw_queue(env, "IN_QUEUE").create_queue()
    return env


def raw_queue(env: dict[str, str], key: str, suffix: str = "") -> QueueClient:
    return QueueClient.from_connection_string(env["AzureWebJobsStorage"], env[key] + suffix)


def send(env: dict[str, str], text: str) -> None:
    raw_queue(env, "IN_QUEUE").send_message(base64.b64encode(text.encode()).decode())


def peek(env: dict[str, str], key: str, suffix: str = "") -> list[str]:
    try:
        return [m.content for m in raw_queue(env, key, suffix).peek_messages(max_messages=32)]
    except ResourceNotFoundError:
        return []


def done(env: dict[str, str]) -> list[dict[str, Any]]:
    return [json.loads(base64.b64decode(c)) for c in peek(env, "OUT_QUEUE")]


def test_messages_are_decoded_and_results_sent_on(apps: Path, queue_env: dict[str, str],
                                                  eventually: Callable[..., Any]) -> None:
    for index in range(6):  # more than one batch of 4
        send(queue_env, json.dumps({"n": index}))
    with running_host(apps / "queue_app", queue_env):
        results = eventually(lambda: len(done(queue_env)) == 6 and done(queue_env),
                             what="six results")
    bodies = sorted(json.loads(r["body"])["n"] for r in results)
    assert bodies == list(range(6))
    assert all(r["dequeue_count"] == 1 and r["id"] for r in results)
    assert peek(queue_env, "IN_QUEUE") == []


def test_bad_and_failing_messages_go_to_poison_alone(apps: Path, queue_env: dict[str, str],
                                                     eventually: Callable[..., Any]) -> None:
    raw_queue(queue_env, "IN_QUEUE").send_message("plain text, not base64!")
    send(queue_env, "fail: always")
    send(queue_env, "good")
    with running_host(apps / "queue_app", queue_env):
        poison = eventually(lambda: len(peek(queue_env, "IN_QUEUE", "-poison")) == 2
                            and peek(queue_env, "IN_QUEUE", "-poison"), what="two poisoned")
        assert eventually(lambda: not peek(queue_env, "IN_QUEUE"), what="work queue empty")
    assert sorted(poison) == sorted(["plain text, not base64!",
                                     base64.b64encode(b"fail: always").decode()])
    results = done(queue_env)
    assert [r["body"] for r in results] == ["good"]


def test_admin_invoke_runs_a_queue_function(apps: Path, queue_env: dict[str, str],
                                            eventually: Callable[..., Any]) -> None:
    with running_host(apps / "queue_app", queue_env) as threaded:
        url = f"{threaded.host.base_url}/admin/functions/work"
        assert requests.post(url, json={"input": "direct"}, timeout=30).status_code == 401
        response = requests.post(url, json={"input": "direct"},
                                 headers={"x-functions-key": MASTER}, timeout=30)
        assert response.status_code == 202
        results = eventually(lambda: done(queue_env), what="admin-invoked result")
    assert results[0]["body"] == "direct"


def test_a_write_of_the_same_host_wakes_its_queue_trigger(
        apps: Path, host_env: dict[str, str], suffix: str,
        eventually: Callable[..., Any]) -> None:
    """The storage queues extension's shared queue watcher (`QueuesExtensionConfigProvider.cs`:
    `QueueAsyncCollector.AddAsync` calls `IMessageEnqueuedWatcher.Notify(queueName)`, and the
    listeners of that queue poll at once): with host.json `maxPollingInterval` at 5 minutes and
    the listener deep in its backoff, a message the host's own HTTP function writes is
    processed before that backoff wait would have ended."""
    env = {k: v for k, v in host_env.items() if k != "DEVHOST_QUEUE_MAX_POLL_SECONDS"}
    env.update({"WAKE_QUEUE": f"wake-{suffix}", "WAKE_CONTAINER": f"wake-{suffix}"})
    container = ContainerClient.from_connection_string(env["AzureWebJobsStorage"],
                                                       env["WAKE_CONTAINER"])
    with running_host(apps / "wake_app", env) as threaded:
        listener = threaded.host.queue_listeners[0]
        assert listener.max_poll == 300
        eventually(lambda: listener.wait_ends is not None and listener.wait_seconds >= 6.4,
                   timeout=60, what="the listener backing off")
        ends = listener.wait_ends
        assert ends is not None
        answer = requests.post(f"{threaded.host.base_url}/api/enqueue/m1", timeout=30)
        assert answer.status_code == 200 and answer.text == "queued"

        def copied() -> bool:
            try:
                return container.download_blob("m1").readall() == b"m1"
            except ResourceNotFoundError:
                return False

        # Without the wake-up the message waits for the poll at `ends` (or later).
        eventually(copied, timeout=max(0.0, ends - time.monotonic()),
                   what="the message copied before the backoff wait ended")
        assert listener.wakeups >= 1


def test_the_queue_watcher_wakes_only_that_queue_of_that_account() -> None:
    async def scenario() -> list[bool]:
        watcher = QueueWatcher()
        mine = watcher.register("http://127.0.0.1:10001/devstoreaccount1", "jobs")
        watcher.notify("http://127.0.0.1:10001/devstoreaccount1", "other")
        watcher.notify("https://elsewhere.queue.core.windows.net", "jobs")
        before = mine.is_set()
        watcher.notify("http://127.0.0.1:10001/devstoreaccount1", "JOBS")
        return [before, mine.is_set()]

    assert asyncio.run(scenario()) == [False, True]
