"""Durable orchestrations on the devhost engine, driven through the real durable client SDK.

Each test gets its own task hub and counter container in the session's Azurite and runs the
sample app tests/devhost/apps/durable_basics/function_app.py.
"""
from __future__ import annotations

import concurrent.futures
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import azure.durable_functions as df
import pytest
from azure.durable_functions import OrchestrationRuntimeStatus as Status
from azure.storage.blob import BlobServiceClient

from devhost.durable.history import EventType
from devhost.durable.testing import EngineServer, SyncClient

APP = Path(__file__).parent / "apps" / "durable_basics" / "function_app.py"
EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=8,
                                                 thread_name_prefix="durable-test")


@pytest.fixture()
def counters(azurite, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh container the sample activities record their executions in."""
    name = f"dc{uuid.uuid4().hex[:12]}"
    BlobServiceClient.from_connection_string(azurite.connection_string).create_container(name)
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    monkeypatch.setenv("DURABLE_TEST_CONTAINER", name)
    return name


@pytest.fixture()
def server(azurite, counters: str) -> Iterator[EngineServer]:
    srv = EngineServer(APP, azurite.connection_string, f"T{uuid.uuid4().hex[:12]}",
                       EXECUTOR).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture()
def client(server: EngineServer) -> SyncClient:
    return server.client()


def executions(azurite, container: str, key: str) -> int:
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
    return sum(1 for _ in blobs.get_container_client(container).list_blobs(
        name_starts_with=f"{key}/"))


def test_chaining_runs_sync_and_async_activities_in_order(client: SyncClient) -> None:
    instance_id = client.start_new("chain", None, "ada")
    status = client.wait(instance_id)
    assert status.runtime_status == Status.Completed
    assert status.output == ["hello ada", "HELLO ADA"]
    assert status.input_ == "ada"
    assert status.name == "chain"


def test_fan_out_fan_in_of_a_thousand_activities(server: EngineServer,
                                                  client: SyncClient) -> None:
    replays_before = server.engine.stats["replays"]
    instance_id = client.start_new("fan_out", None, 1000)
    status = client.wait(instance_id, timeout=120)
    # Completions are batched: far fewer replays than one per activity.
    assert server.engine.stats["replays"] - replays_before < 100
    assert status.runtime_status == Status.Completed
    assert status.output == {"count": 1000, "sum": sum(i * i for i in range(1000))}
    history = client.get_status(instance_id, show_history=True).historyEvents
    # DurableClient.GetDurableOrchestrationStatusAsync folds each TaskScheduled into its
    # TaskCompleted (FunctionName, ScheduledTime, Input) and drops the ids.
    completed = [e for e in history if e["EventType"] == "TaskCompleted"]
    assert [e for e in history if e["EventType"] == "TaskScheduled"] == []
    assert len(completed) == 1000
    assert {e["FunctionName"] for e in completed} == {"square"}
    assert sorted(int(e["Input"]) for e in completed) == list(range(1000))
    assert all("TaskScheduledId" not in e and "ScheduledTime" in e for e in completed)


def test_external_event_wins_the_race_against_the_timer(client: SyncClient) -> None:
    instance_id = client.start_new("approval", None, 300)
    client.wait(instance_id, lambda s: s.runtime_status == Status.Running)
    client.raise_event(instance_id, "approve", {"by": "grace"})
    status = client.wait(instance_id)
    assert status.runtime_status == Status.Completed
    assert status.output == {"approved": {"by": "grace"}}


def test_timer_wins_the_race_when_no_event_comes(client: SyncClient) -> None:
    instance_id = client.start_new("approval", None, 0.3)
    status = client.wait(instance_id)
    assert status.output == "timed out"
    history = client.get_status(instance_id, show_history=True).historyEvents
    assert [e["EventType"] for e in history].count("TimerFired") == 1


def test_retry_runs_a_failing_activity_until_it_succeeds(client: SyncClient, azurite,
                                                          counters: str) -> None:
    job = {"key": "flaky-ok", "fail_times": 2, "attempts": 4}
    status = client.wait(client.start_new("retry_flaky", None, job))
    assert status.output == {"result": "ok after 3"}
    assert executions(azurite, counters, "flaky-ok") == 3


def test_retry_gives_up_after_max_attempts_and_surfaces_the_failure(
        client: SyncClient, azurite, counters: str) -> None:
    job = {"key": "flaky-bad", "fail_times": 10, "attempts": 2}
    status = client.wait(client.start_new("retry_flaky", None, job))
    assert status.runtime_status == Status.Completed
    assert "Activity function 'flaky' failed: RuntimeError: flaky failure 2" in (
        status.output["error"])
    assert executions(azurite, counters, "flaky-bad") == 2


def test_retries_mixed_with_plain_tasks_keep_sequence_numbers_in_step(
        client: SyncClient, azurite, counters: str) -> None:
    status = client.wait(client.start_new("mixed_retry", None, "mix"))
    assert status.runtime_status == Status.Completed
    assert status.output == {
        "results": [f"ok after {i % 3 + 1}" for i in range(6)] + [0, 1, 4, 9],
        "after": "hello after"}
    assert [executions(azurite, counters, f"mix-{i}") for i in range(6)] == [
        i % 3 + 1 for i in range(6)]


def test_interleaved_retries_timers_and_children(client: SyncClient) -> None:
    instances = [client.start_new("tangle", None, f"t{n}") for n in range(3)]
    for instance_id in instances:
        status = client.wait(instance_id)
        assert status.runtime_status == Status.Completed, status.output
        assert status.output == {"both": ["ok after 2", 9, "ok after 3"],
                                 "more": [f"ok after {i % 3 + 1}" for i in range(4)]}


def test_sub_orchestration_with_explicit_instance_id(client: SyncClient) -> None:
    instance_id = client.start_new("parent", "family-1")
    status = client.wait(instance_id)
    assert status.output == {"child": {"square": 441, "parent": "family-1",
                                       "me": "family-1-child"}}
    child = client.get_status("family-1-child")
    assert child.runtime_status == Status.Completed
    assert child.name == "child"
    assert child.input_ == {"x": 21}


def test_sub_orchestration_retry_restarts_the_failed_child(client: SyncClient, azurite,
                                                            counters: str) -> None:
    instance_id = client.start_new("parent_retry", None, {"key": "child-flaky",
                                                          "fail_times": 1})
    status = client.wait(instance_id)
    assert status.runtime_status == Status.Completed
    assert status.output == "ok after 2"
    assert executions(azurite, counters, "child-flaky") == 2


def test_continue_as_new_restarts_with_the_new_input(client: SyncClient) -> None:
    instance_id = client.start_new("counter", None, 0)
    status = client.wait(instance_id)
    assert status.runtime_status == Status.Completed
    assert status.output == {"final": 3, "execution_input": 3}
    history = client.get_status(instance_id, show_history=True).historyEvents
    # Only the last execution's history is kept, as in the Durable Task backend.
    assert [e["EventType"] for e in history].count("TaskCompleted") == 1


def test_custom_status_is_visible_while_running_and_after(client: SyncClient) -> None:
    instance_id = client.start_new("staged")
    status = client.wait(instance_id, lambda s: s.custom_status == {"stage": "waiting"})
    assert status.runtime_status == Status.Running
    client.raise_event(instance_id, "next", [1, 2])
    status = client.wait(instance_id)
    assert status.custom_status == {"stage": "done", "got": [1, 2]}
    assert status.output == [1, 2]


def test_unhandled_activity_failure_fails_the_orchestration(client: SyncClient) -> None:
    status = client.wait(client.start_new("failing"))
    assert status.runtime_status == Status.Failed
    assert status.output.startswith("Orchestrator function 'failing' failed: Activity function"
                                    " 'explode' failed: ValueError: boom from activity")


def test_activity_failure_is_an_exception_the_orchestrator_can_catch(
        client: SyncClient) -> None:
    status = client.wait(client.start_new("catching"))
    assert status.runtime_status == Status.Completed
    assert status.output.startswith(
        "caught: Activity function 'explode' failed: ValueError: caught boom")
    assert 'raise ValueError(message)' in status.output


def test_unsupported_action_fails_the_orchestration_clearly(client: SyncClient) -> None:
    status = client.wait(client.start_new("uses_http"))
    assert status.runtime_status == Status.Failed
    assert "NotImplementedError: devhost does not support call_http" in status.output


def test_version_comes_from_host_json_default_version(client: SyncClient) -> None:
    status = client.wait(client.start_new("versioned"))
    assert status.output == "2.0"


def test_version_given_at_start_wins(client: SyncClient) -> None:
    status = client.wait(client.start_new("versioned", None, None, version="3.1"))
    assert status.output == "3.1"


def test_unknown_orchestrator_is_rejected(client: SyncClient) -> None:
    with pytest.raises(Exception, match="'nope' does not exist"):
        client.start_new("nope")


def test_running_instance_id_cannot_be_reused(client: SyncClient) -> None:
    client.start_new("waiter", "busy-1")
    with pytest.raises(Exception, match="already"):
        client.start_new("waiter", "busy-1")
    assert client.get_status("busy-1").runtime_status in (Status.Pending, Status.Running)


def test_terminate_stops_a_waiting_instance_and_events_then_get_410(
        client: SyncClient) -> None:
    instance_id = client.start_new("waiter")
    client.wait(instance_id, lambda s: s.runtime_status == Status.Running)
    client.terminate(instance_id, "no longer needed")
    status = client.wait(instance_id)
    assert status.runtime_status == Status.Terminated
    assert status.output == "no longer needed"
    with pytest.raises(Exception, match="is gone"):
        client.raise_event(instance_id, "go", "late")


def test_suspend_holds_events_until_resume(client: SyncClient) -> None:
    instance_id = client.start_new("waiter")
    client.wait(instance_id, lambda s: s.runtime_status == Status.Running)
    client.suspend(instance_id, "pause")
    suspended = client.wait(instance_id, lambda s: s.runtime_status == Status.Suspended)
    time.sleep(1.1)  # status times have whole seconds (HttpApiHandler.ConvertFrom)
    client.raise_event(instance_id, "go", "held")
    # The event is taken in (the instance is updated) but not delivered to the orchestrator.
    held = client.wait(instance_id,
                       lambda s: s.last_updated_time > suspended.last_updated_time)
    assert held.runtime_status == Status.Suspended
    history = client.get_status(instance_id, show_history=True).historyEvents
    assert [e["EventType"] for e in history if e["EventType"] in (
        "EventRaised", "TaskScheduled")] == []
    client.resume(instance_id, "go on")
    status = client.wait(instance_id)
    assert status.runtime_status == Status.Completed
    assert status.output == "hello held"


def test_purge_removes_a_finished_instance_only(client: SyncClient) -> None:
    running = client.start_new("waiter")
    with pytest.raises(Exception, match="status code 409"):
        client.purge_instance_history(running)
    done = client.start_new("chain", None, "x")
    client.wait(done)
    assert client.purge_instance_history(done).instances_deleted == 1
    assert not client.get_status(done)
    assert client.purge_instance_history(done).instances_deleted == 0


def test_purge_by_filter_deletes_only_finished_matches(client: SyncClient) -> None:
    start = datetime.now(timezone.utc) - timedelta(seconds=5)
    finished = [client.start_new("chain", None, str(i)) for i in range(3)]
    for instance_id in finished:
        client.wait(instance_id)
    running = client.start_new("waiter")
    result = client.purge_instance_history_by(created_time_from=start,
                                              runtime_status=[Status.Completed])
    assert result.instances_deleted == 3
    assert client.get_status(running)
    assert all(not client.get_status(i) for i in finished)


def test_list_with_filters(client: SyncClient) -> None:
    before = datetime.now(timezone.utc) - timedelta(seconds=5)
    done_ids = [client.start_new("chain", f"batch-a-{i}", str(i)) for i in range(2)]
    for instance_id in done_ids:
        client.wait(instance_id)
    waiting = client.start_new("waiter", "batch-b-1")
    client.wait(waiting, lambda s: s.runtime_status == Status.Running)

    every = {s.instance_id for s in client.get_status_all()}
    assert {*done_ids, waiting} <= every
    completed = client.get_status_by(runtime_status=[Status.Completed])
    assert {s.instance_id for s in completed} == set(done_ids)
    running = client.get_status_by(runtime_status=[Status.Running, Status.Pending])
    assert {s.instance_id for s in running} == {waiting}
    prefixed = client.get_status_by(instance_id_prefix="batch-a-")
    assert {s.instance_id for s in prefixed} == set(done_ids)
    future = datetime.now(timezone.utc) + timedelta(hours=1)
    assert client.get_status_by(created_time_from=future) == []
    assert len(client.get_status_by(created_time_from=before)) == 3


def test_large_inputs_events_and_outputs_round_trip(client: SyncClient) -> None:
    big = "z" * 40_000  # over what one table cell holds: kept in blobs instead
    instance_id = client.start_new("waiter", None, big)
    client.wait(instance_id, lambda s: s.runtime_status == Status.Running)
    client.raise_event(instance_id, "go", big)
    status = client.wait(instance_id)
    assert status.output == f"hello {big}"
    assert status.input_ == big
    listed = client.get_status_by(runtime_status=[Status.Completed])
    assert [s.output for s in listed if s.instance_id == instance_id] == [f"hello {big}"]


def test_entity_signal_call_and_failure_from_an_orchestration(client: SyncClient) -> None:
    status = client.wait(client.start_new("use_entity", None, "k1"))
    assert status.runtime_status == Status.Completed
    assert status.output == {"total": 15, "error": "tally refuses", "again": 15}
    state = client.read_entity_state(df.EntityId("tally", "k1"))
    assert state.entity_exists and state.entity_state == 15


def test_entity_signal_and_read_from_the_client(client: SyncClient) -> None:
    entity = df.EntityId("tally", "client-side")
    assert not client.read_entity_state(entity).entity_exists
    client.signal_entity(entity, "add", 2)
    client.signal_entity(entity, "add", 40)
    deadline = time.monotonic() + 30
    while client.read_entity_state(entity).entity_state != 42:
        assert time.monotonic() < deadline, "entity state never reached 42"
        time.sleep(0.05)
    with pytest.raises(Exception, match="status code 400"):
        client.signal_entity(df.EntityId("nosuch", "k"), "add", 1)


def test_a_start_and_an_event_are_stored_in_the_instances_own_writes(
        azurite, counters: str, proxy) -> None:
    """No read for an id the hub does not hold; the first episode's save creates the
    instance, and an event for a held instance goes
    straight into the episode it starts: both calls return once that save is done, with no
    Pending row written before and no inbox row for the event."""
    hub = f"T{uuid.uuid4().hex[:12]}"
    srv = EngineServer(APP, proxy.connection_string, hub, EXECUTOR).start()
    try:
        client = srv.client()
        proxy.clear()
        # The engine knows every id in its hub (read at start): an unknown one costs no read.
        assert client.get_status("never-started").runtime_status is None
        instance_id = client.start_new("approval", None, 300)
        mine = [(s.method, s.status) for s in proxy.requests() if hub in s.path]
        assert mine == [("PUT", 204)]  # the first episode's save, nothing before it
        row = srv.lt.run(srv.engine._store.get_row(instance_id))
        assert row is not None and row["RuntimeStatus"] == "Running"
        proxy.clear()
        client.raise_event(instance_id, "approve", {"by": "grace"})
        mine = [(s.method, s.path.split("/")[-1][:len(hub) + 5]) for s in proxy.requests()
                if hub in s.path and s.write]
        assert mine[:1] == [("PUT", f"{hub}Insta")] and not [m for m in mine if "Inbox" in m[1]]
        doc = srv.lt.run(srv.engine._store.load_doc(instance_id))
        raised = [e for e in doc["history"] if e["EventType"] == EventType.EVENT_RAISED]
        assert [e["Name"] for e in raised] == ["approve"]  # in the saved history on return
        assert client.wait(instance_id).output == {"approved": {"by": "grace"}}
    finally:
        srv.stop()
