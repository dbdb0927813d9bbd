"""Durable engine parts without storage: one orchestration step (batching, numbering,
retries, bad state JSON), name checks and the host.json default version."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest

from devhost.durable import planner
from devhost.durable.errors import InvalidRequestError
from devhost.durable.functions import discover_default_version
from devhost.durable.history import EventType, check_name, event, flatten_actions
from devhost.durable.testing import load_functions

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def new_doc() -> dict[str, Any]:
    return {
        "instanceId": "i1", "name": "orch", "version": "", "executionId": "e1",
        "input": None, "parent": None, "status": "Pending", "output": None,
        "customStatus": None, "createdTime": "", "lastUpdatedTime": "", "history": [],
        "nextSeq": 0, "actionsSeen": 0, "retries": {}, "retryTimers": {}, "timerLeaves": {},
        "cancelledTimers": [], "buffered": [], "applied": [],
    }


def activity(name: str, value: Any = None) -> dict[str, Any]:
    return {"actionType": 0, "functionName": name, "input": json.dumps(value)}


def test_take_batch_drops_duplicate_outcomes_and_applied_messages() -> None:
    doc = new_doc()
    doc["history"] = [event(EventType.TASK_COMPLETED, TaskScheduledId=0, Result="1")]
    doc["applied"] = ["m1"]
    batch = [
        {"kind": "history", "event": event(EventType.TASK_COMPLETED, TaskScheduledId=0)},
        {"kind": "history", "event": event(EventType.TASK_COMPLETED, TaskScheduledId=1)},
        {"kind": "history", "event": event(EventType.TASK_COMPLETED, TaskScheduledId=1)},
        {"kind": "history", "event": event(EventType.EVENT_RAISED, Name="x"), "_msg": "m1"},
        {"kind": "history", "event": event(EventType.EVENT_RAISED, Name="y"), "_msg": "m2"},
        {"kind": "history", "event": event(EventType.TIMER_FIRED, TimerId=5), "exec": "old"},
    ]
    new_events, terminate = planner.take_batch(doc, batch, NOW)
    assert terminate is None
    assert [(e["EventType"], e.get("TaskScheduledId"), e.get("Name")) for e in new_events] == [
        (EventType.TASK_COMPLETED, 1, None), (EventType.EVENT_RAISED, None, "y")]
    assert doc["applied"][-2:] == ["m1", "m2"]


def test_take_batch_starts_once_and_handles_commands() -> None:
    doc = new_doc()
    batch = [{"kind": "start"}, {"kind": "start"}, {"kind": "suspend", "reason": "r"}]
    new_events, terminate = planner.take_batch(doc, batch, NOW)
    assert [e["EventType"] for e in new_events] == [EventType.EXECUTION_STARTED]
    assert new_events[0]["Version"] == ""
    assert doc["status"] == "Suspended"
    _, terminate = planner.take_batch(doc, [{"kind": "terminate", "reason": "bye"}], NOW)
    assert terminate == "bye"


def test_new_actions_get_sequence_numbers_in_order_skipping_event_waits() -> None:
    doc = new_doc()
    state = {"isDone": False, "actions": [[
        activity("a"),
        {"actionType": 12, "compoundActions": [
            activity("b"), {"actionType": 6, "externalEventName": "go"},
            {"actionType": 5, "fireAt": "2030-01-02T03:05:00.000000Z", "isCanceled": False}]},
    ]]}
    work = planner.apply_state(doc, state, None, [], NOW)
    assert [(w.kind, w.seq) for w in work] == [("activity", 0), ("activity", 1), ("timer", 2)]
    scheduled = [(e["EventType"], e["EventId"]) for e in doc["history"]
                 if e["EventType"] in (EventType.TASK_SCHEDULED, EventType.TIMER_CREATED)]
    assert scheduled == [(EventType.TASK_SCHEDULED, 0), (EventType.TASK_SCHEDULED, 1),
                         (EventType.TIMER_CREATED, 2)]
    assert doc["status"] == "Running"
    # The same cumulative list again schedules nothing new; cancelling the timer stops it.
    state["actions"][0][1]["compoundActions"][2]["isCanceled"] = True
    work = planner.apply_state(doc, state, None, [], NOW)
    assert [(w.kind, w.seq) for w in work] == [("cancel", 2)]
    assert doc["cancelledTimers"] == [2]


def test_retry_events_take_numbers_after_new_actions() -> None:
    doc = new_doc()
    retry = {"actionType": 1, "functionName": "f", "input": "1",
             "retryOptions": {"firstRetryIntervalInMilliseconds": 1000,
                              "maxNumberOfAttempts": 2}}
    planner.apply_state(doc, {"actions": [[retry]]}, None, [], NOW)
    assert doc["retries"]["0"]["attempt"] == 1
    failed = event(EventType.TASK_FAILED, TaskScheduledId=0, Reason="r", Details="d")
    other = event(EventType.TASK_COMPLETED, TaskScheduledId=7, Result="1")
    ordinary, tail = planner.split_batch(doc, [failed, other])
    assert ordinary == [other] and tail == [failed]
    # User code scheduled one more activity in this replay: it takes 1, the retry timer 2.
    work = planner.apply_state(doc, {"actions": [[retry, activity("g")]]}, None, tail, NOW)
    assert [(w.kind, w.seq) for w in work] == [("activity", 1), ("timer", 2)]
    assert work[1].fire_at == "2030-01-02T03:04:06.000000Z"
    fired = event(EventType.TIMER_FIRED, TimerId=2, FireAt=work[1].fire_at)
    ordinary, tail = planner.split_batch(doc, [fired])
    assert tail == [fired]
    work = planner.apply_state(doc, {"actions": [[retry, activity("g")]]}, None, tail, NOW)
    assert [(w.kind, w.seq, w.name) for w in work] == [("activity", 3, "f")]
    assert doc["retries"]["3"]["attempt"] == 2
    # The last attempt fails: one more timer, and when it fires the failure is ordinary.
    failed = event(EventType.TASK_FAILED, TaskScheduledId=3, Reason="r", Details="d")
    _, tail = planner.split_batch(doc, [failed])
    work = planner.apply_state(doc, {"actions": [[retry, activity("g")]]}, None, tail, NOW)
    assert [(w.kind, w.seq) for w in work] == [("timer", 4)]
    ordinary, tail = planner.split_batch(
        doc, [event(EventType.TIMER_FIRED, TimerId=4, FireAt="x")])
    assert tail == [] and len(ordinary) == 1
    assert doc["retryTimers"] == {}


def test_orchestrator_error_and_unreadable_actions_fail_the_instance() -> None:
    doc = new_doc()
    planner.apply_state(doc, {"customStatus": {"s": 1}}, "ValueError: bad", [], NOW)
    assert doc["status"] == "Failed"
    assert json.loads(doc["output"]) == "Orchestrator function 'orch' failed: ValueError: bad"
    assert json.loads(doc["customStatus"]) == {"s": 1}
    doc = new_doc()
    work = planner.apply_state(doc, {"actions": [[{"actionType": 0}]]}, None, [], NOW)
    assert work == [] and doc["status"] == "Failed"
    assert "could not read the orchestrator's actions" in json.loads(doc["output"])
    doc = new_doc()
    planner.apply_state(doc, {"actions": [[{"actionType": 8, "httpRequest": {}}]]}, None,
                        [], NOW)
    assert "does not support call_http" in json.loads(doc["output"])


def test_entity_operations_become_event_sent_with_a_request_id() -> None:
    doc = new_doc()
    actions = [[{"actionType": 9, "instanceId": "@tally@k", "operation": "add", "input": "5"},
                {"actionType": 7, "instanceId": "@tally@k", "operation": "get",
                 "input": "null"}]]
    work = planner.apply_state(doc, {"actions": actions}, None, [], NOW)
    assert [(w.kind, w.seq, w.instance_id) for w in work] == [
        ("entity", 0, "@tally@k"), ("entity", 1, "@tally@k")]
    requests = [json.loads(w.input) for w in work]
    assert [(r["id"], r["op"], r["signal"]) for r in requests] == [
        ("e1:0", "add", True), ("e1:1", "get", False)]
    sent = [e for e in doc["history"] if e["EventType"] == EventType.EVENT_SENT]
    assert [e["EventId"] for e in sent] == [0, 1]


def test_continue_as_new_and_completion() -> None:
    doc = new_doc()
    planner.apply_state(doc, {"isDone": True, "actions": [[{"actionType": 4, "input": "5"}]]},
                        None, [], NOW)
    assert doc["status"] == "ContinuedAsNew" and doc["continueWith"] == "5"
    doc = new_doc()
    planner.apply_state(doc, {"isDone": True, "actions": [], "output": {"a": [1]}}, None, [],
                        NOW)
    assert doc["status"] == "Completed" and json.loads(doc["output"]) == {"a": [1]}


def test_flatten_and_names() -> None:
    nested = [[{"actionType": 11, "compoundActions": [
        {"actionType": 12, "compoundActions": [activity("a"), activity("b")]}, activity("c")]}]]
    assert [a["functionName"] for a in flatten_actions(nested)] == ["a", "b", "c"]
    assert check_name("ok:1-x", "id") == "ok:1-x"
    for bad in ("", "a/b", "a\\b", "a#b", "a?b", "a\nb", "@x", "x" * 101, 5):
        with pytest.raises(InvalidRequestError):
            check_name(bad, "id")  # type: ignore[arg-type]


def test_default_version_comes_from_host_json_with_setting_references(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "host.json").write_text(json.dumps(
        {"version": "2.0", "extensions": {"durableTask": {"defaultVersion": "v%APP_VER%"}}}))
    (tmp_path / "function_app.py").write_text(
        "import azure.durable_functions as df\n"
        "app = df.DFApp()\n"
        "@app.orchestration_trigger(context_name='context')\n"
        "def orch(context):\n"
        "    return context.version\n")
    monkeypatch.setenv("APP_VER", "7.1")
    assert discover_default_version(load_functions(tmp_path / "function_app.py")) == "v7.1"
    (tmp_path / "host.json").write_text(json.dumps({"version": "2.0"}))
    assert discover_default_version(load_functions(tmp_path / "function_app.py")) is None
