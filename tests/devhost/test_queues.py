"""Queue triggers: base64 batches, a bad message alone, retries and the poison queue."""
from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueClient

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
