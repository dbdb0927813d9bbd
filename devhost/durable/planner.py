"""One orchestration step without I/O: what to replay, and what the replay's result means.

`split_batch` orders new events so sequence numbers line up with the SDK's, `build_context`
makes the context JSON for the orchestrator function, and `apply_state` records the
orchestrator's new actions (and retry bookkeeping) as history events in the state document
and returns the work the engine must start once that document is saved.

Sequence numbers: the SDK numbers every task it schedules (activities, sub-orchestrations,
timers; not external-event waits) in the order user code yields them. A with-retry task also
takes a number for the timer after each failure and one for each new attempt, without running
user code. Those retry events are replayed after all other new events, so their numbers follow
the numbers user code takes for new actions in the same replay.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from devhost.durable.history import (
    COMPLETION_KEYS,
    ActionType,
    EventType,
    completed_ids,
    event,
    flatten_actions,
    iso,
    takes_sequence_number,
)

SCHEMA_VERSION = 2  # the newest replay schema the SDK knows (cumulative action lists)
_UNSUPPORTED = {ActionType.CALL_HTTP: "call_http"}


@dataclass(frozen=True)
class Work:
    """Something to start after a step is saved.

    Kinds: `activity`, `child`, `timer`, `cancel` (one timer, or all when `seq` is -1), and
    `entity` (an operation for entity `instance_id`, the request JSON in `input`).
    """

    kind: str
    seq: int = -1
    name: str | None = None
    input: str | None = None
    instance_id: str | None = None
    version: str | None = None
    fire_at: str | None = None


def fork(doc: dict[str, Any]) -> dict[str, Any]:
    """A copy of a state document that a step can change without touching the saved one."""
    out = dict(doc)
    for key in ("history", "cancelledTimers", "buffered"):
        out[key] = list(doc[key])
    for key in ("retries", "retryTimers"):
        out[key] = {k: dict(v) for k, v in doc[key].items()}
    out["timerLeaves"] = dict(doc["timerLeaves"])
    return out


def take_batch(doc: dict[str, Any], batch: list[dict[str, Any]], now: datetime
               ) -> tuple[list[dict[str, Any]], str | None]:
    """Apply commands in `doc` and collect the batch's new history events.

    Returns (new events, termination reason or None). Messages already applied (per
    `doc["applied"]`) and outcomes of tasks that already have one are dropped, so a message
    delivered twice changes nothing.
    """
    applied = set(doc.get("applied") or [])
    done = completed_ids(doc["history"])
    new_events: list[dict[str, Any]] = []
    terminate: str | None = None
    for item in batch:
        if item.get("_msg") in applied:
            continue
        kind = item["kind"]
        if kind == "start":
            if not doc["history"] and not any(
                    e["EventType"] == EventType.EXECUTION_STARTED for e in new_events):
                new_events.insert(0, started_event(doc, now))
        elif kind == "terminate":
            terminate = str(item.get("reason") or "")
        elif kind == "suspend" and doc["status"] in ("Running", "Pending"):
            doc["status"] = "Suspended"
            doc["history"].append(event(EventType.EXECUTION_SUSPENDED, timestamp=now,
                                        Reason=item.get("reason")))
        elif kind == "resume" and doc["status"] == "Suspended":
            doc["status"] = "Running"
            doc["history"].append(event(EventType.EXECUTION_RESUMED, timestamp=now,
                                        Reason=item.get("reason")))
        elif kind == "history" and item.get("exec") in (None, doc["executionId"]):
            ev = item["event"]
            key = COMPLETION_KEYS.get(ev["EventType"])
            if key is not None:
                if ev[key] in done:
                    continue
                done.add(ev[key])
            new_events.append(ev)
    doc["applied"] = (list(doc.get("applied") or []) +
                      [item["_msg"] for item in batch if "_msg" in item])[-200:]
    doc["lastUpdatedTime"] = iso(now)
    return new_events, terminate


def started_event(doc: dict[str, Any], now: datetime) -> dict[str, Any]:
    """ExecutionStarted for the current execution (`Version` must be present for the SDK)."""
    parent = doc.get("parent")
    parent_info = None
    if parent:
        parent_info = {"Name": parent.get("name"), "TaskScheduleId": parent["taskId"],
                       "OrchestrationInstance": {"InstanceId": parent["instanceId"],
                                                 "ExecutionId": parent["executionId"]}}
    return event(EventType.EXECUTION_STARTED, timestamp=now, Name=doc["name"],
                 Version=doc.get("version") or "", Input=doc.get("input"),
                 OrchestrationInstance={"InstanceId": doc["instanceId"],
                                        "ExecutionId": doc["executionId"]},
                 ParentInstance=parent_info)


def split_batch(doc: dict[str, Any], new_events: list[dict[str, Any]]
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(ordinary events, retry events that take a sequence number), dropping finished retries."""
    ordinary, tail = [], []
    for ev in new_events:
        kind = ev["EventType"]
        if kind in (EventType.TASK_FAILED, EventType.SUB_ORCHESTRATION_INSTANCE_FAILED) and (
                str(ev["TaskScheduledId"]) in doc["retries"]):
            tail.append(ev)
        elif kind == EventType.TIMER_FIRED and str(ev["TimerId"]) in doc["retryTimers"]:
            info = doc["retryTimers"][str(ev["TimerId"])]
            if info["attempt"] < info["max"]:
                tail.append(ev)
            else:  # the last attempt's timer: the SDK now surfaces the failure
                doc["retryTimers"].pop(str(ev["TimerId"]))
                ordinary.append(ev)
        else:
            if kind in (EventType.TASK_COMPLETED, EventType.SUB_ORCHESTRATION_INSTANCE_COMPLETED):
                doc["retries"].pop(str(ev["TaskScheduledId"]), None)
            ordinary.append(ev)
    return ordinary, tail


def build_context(doc: dict[str, Any], fresh: list[dict[str, Any]]) -> str:
    """The orchestration trigger's context JSON: saved history marked played, then `fresh`."""
    sent = [dict(e, IsPlayed=True) for e in doc["history"]] + fresh
    parent = doc.get("parent") or {}
    return json.dumps({
        "history": sent, "input": doc.get("input"), "instanceId": doc["instanceId"],
        "isReplaying": bool(doc["history"]), "parentInstanceId": parent.get("instanceId"),
        "upperSchemaVersion": SCHEMA_VERSION,
    })


def apply_state(doc: dict[str, Any], state: dict[str, Any], error: str | None,
                tail: list[dict[str, Any]], now: datetime) -> list[Work]:
    """Record a replay's outcome in `doc` (history, status, output); returns work to start."""
    if "customStatus" in state:
        doc["customStatus"] = json.dumps(state["customStatus"])
    work: list[Work] = []
    if error is None:
        try:
            error = _schedule(doc, state, tail, now, work)
        except (KeyError, TypeError, ValueError) as exc:
            error = f"devhost could not read the orchestrator's actions: {exc!r}"
    if error is not None:
        work.clear()
        doc["status"] = "Failed"
        doc["output"] = json.dumps(f"Orchestrator function '{doc['name']}' failed: {error}")
        doc["history"].append(event(EventType.EXECUTION_FAILED, timestamp=now, Reason=error))
    elif doc["status"] == "ContinuedAsNew":
        work.append(Work("cancel"))
    elif state.get("isDone"):
        doc["status"] = "Completed"
        output = state.get("output")
        doc["output"] = None if output is None else json.dumps(output)
        doc["history"].append(event(EventType.EXECUTION_COMPLETED, timestamp=now,
                                    Result=doc["output"], OrchestrationStatus="Completed"))
    else:
        doc["status"] = "Running"
    doc["history"].append(event(EventType.ORCHESTRATOR_COMPLETED, timestamp=now))
    return work


def _schedule(doc: dict[str, Any], state: dict[str, Any], tail: list[dict[str, Any]],
              now: datetime, work: list[Work]) -> str | None:
    """Number and record new actions, then the retry events; an error text if unsupported."""
    leaves = flatten_actions(state.get("actions") or [])
    for index, timer_id in list(doc["timerLeaves"].items()):
        if int(index) < len(leaves) and leaves[int(index)].get("isCanceled"):
            doc["timerLeaves"].pop(index)
            doc["cancelledTimers"].append(timer_id)
            work.append(Work("cancel", timer_id))
    continue_as_new = None
    for index in range(doc["actionsSeen"], len(leaves)):
        action = leaves[index]
        kind = action.get("actionType")
        if not takes_sequence_number(action):
            continue
        seq = _next_seq(doc)
        if kind in (ActionType.CALL_ACTIVITY, ActionType.CALL_ACTIVITY_WITH_RETRY):
            _activity(doc, seq, action["functionName"], action.get("input"), now, work)
            if kind == ActionType.CALL_ACTIVITY_WITH_RETRY:
                doc["retries"][str(seq)] = _retry_info("activity", action)
        elif kind in (ActionType.CALL_SUB_ORCHESTRATOR,
                      ActionType.CALL_SUB_ORCHESTRATOR_WITH_RETRY):
            _child(doc, seq, action["functionName"], action.get("input"),
                   action.get("instanceId"), action.get("version"), now, work)
            if kind == ActionType.CALL_SUB_ORCHESTRATOR_WITH_RETRY:
                doc["retries"][str(seq)] = _retry_info("orchestrator", action)
        elif kind == ActionType.CREATE_TIMER:
            doc["timerLeaves"][str(index)] = seq
            _timer(doc, seq, action["fireAt"], now, work, bool(action.get("isCanceled")))
        elif kind in (ActionType.CALL_ENTITY, ActionType.SIGNAL_ENTITY):
            _entity(doc, seq, action, kind == ActionType.SIGNAL_ENTITY, now, work)
        elif kind == ActionType.CONTINUE_AS_NEW:
            continue_as_new = action
        else:
            what = _UNSUPPORTED.get(kind, f"action type {kind}")
            return f"NotImplementedError: devhost does not support {what}"
    doc["actionsSeen"] = len(leaves)
    for ev in tail:
        seq = _next_seq(doc)
        if ev["EventType"] == EventType.TIMER_FIRED:  # retry timer: the next attempt
            info = doc["retryTimers"].pop(str(ev["TimerId"]))
            info["attempt"] += 1
            doc["retries"][str(seq)] = info
            if info["kind"] == "activity":
                _activity(doc, seq, info["name"], info["input"], now, work)
            else:
                _child(doc, seq, info["name"], info["input"], info["instanceId"],
                       info["version"], now, work)
        else:  # failed attempt: a timer before the next one (also after the last one)
            info = doc["retries"].pop(str(ev["TaskScheduledId"]))
            doc["retryTimers"][str(seq)] = info
            _timer(doc, seq, iso(now + timedelta(milliseconds=info["delayMs"])), now, work)
    if continue_as_new is not None and state.get("isDone"):
        doc["history"].append(event(EventType.EXECUTION_COMPLETED, timestamp=now,
                                    OrchestrationStatus="ContinuedAsNew",
                                    Result=continue_as_new.get("input")))
        doc["status"] = "ContinuedAsNew"
        doc["continueWith"] = continue_as_new.get("input")
    return None


def _next_seq(doc: dict[str, Any]) -> int:
    seq = doc["nextSeq"]
    doc["nextSeq"] = seq + 1
    return seq


def _activity(doc: dict[str, Any], seq: int, name: str, input_text: str | None,
              now: datetime, work: list[Work]) -> None:
    doc["history"].append(event(EventType.TASK_SCHEDULED, seq, now, Name=name, Input=input_text))
    work.append(Work("activity", seq, name, input_text))


def _child(doc: dict[str, Any], seq: int, name: str, input_text: str | None,
           instance_id: str | None, version: str | None, now: datetime,
           work: list[Work]) -> None:
    child_id = instance_id or f"{doc['instanceId']}:{seq:04d}"
    doc["history"].append(event(EventType.SUB_ORCHESTRATION_INSTANCE_CREATED, seq, now,
                                Name=name, Input=input_text, InstanceId=child_id,
                                Version=version))
    work.append(Work("child", seq, name, input_text, child_id, version))


def _entity(doc: dict[str, Any], seq: int, action: dict[str, Any], signal: bool,
            now: datetime, work: list[Work]) -> None:
    """EventSent for an entity operation; a call's answer comes back named by the request id."""
    request = {"id": f"{doc['executionId']}:{seq}", "op": action["operation"],
               "signal": signal, "input": action.get("input"),
               "parent": doc["instanceId"], "parentExec": doc["executionId"]}
    text = json.dumps(request)
    doc["history"].append(event(EventType.EVENT_SENT, seq, now, Name="op",
                                InstanceId=action["instanceId"], Input=text))
    work.append(Work("entity", seq, action["operation"], text, action["instanceId"]))


def _timer(doc: dict[str, Any], seq: int, fire_at: str, now: datetime, work: list[Work],
           canceled: bool = False) -> None:
    doc["history"].append(event(EventType.TIMER_CREATED, seq, now, FireAt=fire_at))
    if canceled:
        doc["cancelledTimers"].append(seq)
    else:
        work.append(Work("timer", seq, fire_at=fire_at))


def _retry_info(kind: str, action: dict[str, Any]) -> dict[str, Any]:
    options = action.get("retryOptions") or {}
    return {"kind": kind, "name": action["functionName"], "input": action.get("input"),
            "instanceId": action.get("instanceId"), "version": action.get("version"),
            "attempt": 1, "max": int(options.get("maxNumberOfAttempts") or 1),
            "delayMs": max(0, int(options.get("firstRetryIntervalInMilliseconds") or 0))}
