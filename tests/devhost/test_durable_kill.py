"""SIGKILL devhost while orchestrations run; a new devhost finishes every one of them.

Recorded activity results are never recomputed: an activity runs again only if it was in flight
at the kill (at-least-once), so executions exceed the number of activities by at most the
number that could have been running at that moment.
"""
from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import requests
from azure.storage.blob import BlobServiceClient

from devhost.process import DevHostProcess

APP = Path(__file__).parent / "apps" / "durable_kill"
INSTANCES, ACTIVITIES = 4, 20


def _status(base: str, instance_id: str) -> dict:
    url = f"{base}/runtime/webhooks/durabletask/instances/{instance_id}"
    return requests.get(url, timeout=10).json()


def test_killed_host_resumes_every_orchestration(azurite) -> None:
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = blobs.create_container(f"kill{uuid.uuid4().hex[:12]}")
    env = {"AzureWebJobsStorage": azurite.connection_string,
           "KILL_TEST_CONTAINER": container.container_name,
           "KILL_TEST_HUB": f"kill{uuid.uuid4().hex[:10]}",
           "PYTHON_THREADPOOL_THREAD_COUNT": "4"}
    ids = [f"fan-{i}" for i in range(INSTANCES)]
    first = DevHostProcess(APP, env=env).start()
    try:
        for instance_id in ids:
            response = requests.post(f"{first.base_url}/api/start/{instance_id}",
                                     params={"n": ACTIVITIES}, timeout=10)
            assert response.status_code == 202, response.text
        deadline = time.monotonic() + 60
        while sum(1 for _ in container.list_blobs()) < INSTANCES * ACTIVITIES // 3:
            assert time.monotonic() < deadline, first.output()[-3000:]
            time.sleep(0.05)
    finally:
        first.stop(sig=signal.SIGKILL)
    assert first.returncode == -signal.SIGKILL
    done_before = sum(1 for _ in container.list_blobs())
    assert done_before < INSTANCES * ACTIVITIES, "everything finished before the kill"

    second = DevHostProcess(APP, env=env).start()
    try:
        deadline = time.monotonic() + 120
        statuses = {}
        while time.monotonic() < deadline:
            statuses = {i: _status(second.base_url, i) for i in ids}
            if all(s.get("runtimeStatus") == "Completed" for s in statuses.values()):
                break
            time.sleep(0.2)
        assert all(s.get("runtimeStatus") == "Completed" for s in statuses.values()), statuses
    finally:
        second.stop()
    expected = [i * i for i in range(ACTIVITIES)]
    for status in statuses.values():
        assert status["output"] == {"results": expected, "sum": sum(expected)}
    executions = sum(1 for _ in container.list_blobs())
    # every activity ran; only the ones in flight at the kill (at most one per worker thread
    # and instance batch) ran twice
    assert INSTANCES * ACTIVITIES <= executions <= INSTANCES * ACTIVITIES + 4 * INSTANCES
