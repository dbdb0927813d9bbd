"""A devhost restart resumes orchestrations from storage without repeating recorded work.

Three engines run one after another on the same task hub in Azurite. Activities count their
executions in blobs: each completed-and-recorded step runs exactly once; the step that was
running when the engine stopped runs again (the documented at-least-once behaviour).
"""
from __future__ import annotations

import concurrent.futures
import time
import uuid
from pathlib import Path

import pytest
from azure.durable_functions import OrchestrationRuntimeStatus as Status
from azure.storage.blob import BlobServiceClient, ContainerClient

from devhost.durable.history import parse_time
from devhost.durable.testing import EngineServer

APP = Path(__file__).parent / "apps" / "durable_restart" / "function_app.py"
EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=4,
                                                 thread_name_prefix="durable-restart")


@pytest.fixture()
def counters(azurite, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ContainerClient:
    """Storage for the sample app's execution records, and its gate file."""
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = blobs.create_container(f"dr{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    monkeypatch.setenv("DURABLE_TEST_CONTAINER", container.container_name)
    monkeypatch.setenv("DURABLE_TEST_GATE", str(tmp_path / "gate"))
    return container


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


def test_restart_resumes_without_repeating_recorded_activities(
        azurite, counters: ContainerClient, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    hub = f"R{uuid.uuid4().hex[:12]}"

    def runs(step: str) -> int:
        return sum(1 for _ in counters.list_blobs(name_starts_with=f"{step}/"))

    def engine() -> EngineServer:
        return EngineServer(APP, azurite.connection_string, hub, EXECUTOR).start()

    # 1st engine: a1 and a2 complete, then the orchestration waits on a durable timer.
    first = engine()
    client = first.client()
    instance_id = client.start_new("resumable", "resume-1")
    client.wait(instance_id, lambda s: s.custom_status == "timer")
    first.stop()

    # 2nd engine: the timer fires at its recorded time; the event starts the gated step a3,
    # and the engine stops while a3 is still running.
    second = engine()
    client = second.client()
    client.wait(instance_id, lambda s: s.custom_status == "waiting-go")
    client.raise_event(instance_id, "go", "now")
    wait_for(lambda: runs("a3") == 1)
    second.stop()

    # 3rd engine: a3 runs again (its result was never recorded), a4 runs, the instance ends.
    gate.touch()
    third = engine()
    try:
        client = third.client()
        status = client.wait(instance_id)
        history = client.get_status(instance_id, show_history=True).historyEvents
    finally:
        third.stop()

    assert status.runtime_status == Status.Completed
    assert status.output == {"steps": ["a1", "a2", "a3", "a4"], "go": "now"}
    assert {step: runs(step) for step in ("a1", "a2", "a3", "a4")} == {
        "a1": 1, "a2": 1, "a3": 2, "a4": 1}
    fired = [e for e in history if e["EventType"] == "TimerFired"]
    assert len(fired) == 1
    assert parse_time(fired[0]["Timestamp"]) >= parse_time(fired[0]["FireAt"])
    assert [e["EventType"] for e in history].count("TaskCompleted") == 4


def test_restart_relinks_a_waiting_sub_orchestration(
        azurite, counters: ContainerClient) -> None:
    hub = f"R{uuid.uuid4().hex[:12]}"

    first = EngineServer(APP, azurite.connection_string, hub, EXECUTOR).start()
    client = first.client()
    client.start_new("parent_of_waiting", "fam")
    client.wait("fam-kid", lambda s: bool(s) and s.runtime_status == Status.Running)
    first.stop()

    second = EngineServer(APP, azurite.connection_string, hub, EXECUTOR).start()
    try:
        client = second.client()
        assert client.get_status("fam").runtime_status == Status.Running
        client.raise_event("fam-kid", "word", "hello")
        status = client.wait("fam")
    finally:
        second.stop()
    assert status.runtime_status == Status.Completed
    assert status.output == {"parent got": "child got hello"}


def test_the_same_engine_object_can_stop_and_start_again(
        azurite, counters: ContainerClient) -> None:
    server = EngineServer(APP, azurite.connection_string, f"R{uuid.uuid4().hex[:12]}",
                          EXECUTOR).start()
    try:
        client = server.client()
        client.start_new("waiting_child", "solo")
        client.wait("solo", lambda s: bool(s) and s.runtime_status == Status.Running)
        server.lt.run(server.engine.stop())
        server.lt.run(server.engine.start())
        client.raise_event("solo", "word", "again")
        status = client.wait("solo")
    finally:
        server.stop()
    assert status.output == "child got again"


def test_entity_state_and_calls_survive_a_restart(azurite, counters: ContainerClient) -> None:
    hub = f"R{uuid.uuid4().hex[:12]}"
    first = EngineServer(APP, azurite.connection_string, hub, EXECUTOR).start()
    client = first.client()
    client.start_new("boxer", "boxer-1")
    client.wait("boxer-1", lambda s: bool(s) and s.runtime_status == Status.Running
                and any(e["EventType"] == "EventRaised" for e in client.get_status(
                    "boxer-1", show_history=True).historyEvents))
    first.stop()
    second = EngineServer(APP, azurite.connection_string, hub, EXECUTOR).start()
    try:
        client = second.client()
        client.raise_event("boxer-1", "more", None)
        status = client.wait("boxer-1")
    finally:
        second.stop()
    assert status.output == ["first", "second"]
