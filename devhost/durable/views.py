"""Status answers of the durable HTTP API, built from state documents or instance rows."""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from devhost.durable.history import EventType, parse_time

TERMINAL = frozenset({"Completed", "Failed", "Terminated", "Canceled"})


def json_value(text: str | None) -> Any:
    """Parse stored JSON text for a status answer; text that is not JSON is returned as is."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def status_time(raw: str) -> str:
    """A status timestamp as the HTTP API writes it: `yyyy-MM-ddTHH:mm:ssZ`, whole seconds
    (durable-extension `HttpApiHandler.ConvertFrom`: `ToString("s") + "Z"`)."""
    return parse_time(raw).strftime("%Y-%m-%dT%H:%M:%SZ")


def history_time(raw: str) -> str:
    """A history timestamp as Json.NET writes a UTC DateTime: up to 7 fraction digits,
    trailing zeros dropped (`2024-01-02T03:04:05.12Z`, `2024-01-02T03:04:05Z`)."""
    head, dot, rest = raw.rstrip("Z").partition(".")
    fraction = rest.rstrip("0")
    return f"{head}.{fraction}Z" if dot and fraction else f"{head}Z"


def status_of(doc: dict[str, Any], show_input: bool) -> dict[str, Any]:
    """The status JSON of the Durable HTTP API for one instance's state document."""
    return {
        "name": doc["name"], "instanceId": doc["instanceId"],
        "runtimeStatus": doc["status"],
        "input": json_value(doc.get("input")) if show_input else None,
        "customStatus": json_value(doc.get("customStatus")),
        "output": json_value(doc.get("output")),
        "createdTime": status_time(doc["createdTime"]),
        "lastUpdatedTime": status_time(doc["lastUpdatedTime"]),
    }


def row_matches(row: dict[str, Any], statuses: set[str] | None,
                created_from: datetime | None, created_to: datetime | None,
                prefix: str | None) -> bool:
    """Whether an instance row passes every given list filter."""
    if statuses and row["RuntimeStatus"] not in statuses:
        return False
    if prefix and not row["PartitionKey"].startswith(prefix):
        return False
    if created_from is not None or created_to is not None:
        created = parse_time(row["CreatedTime"])
        if created_from is not None and created < created_from:
            return False
        if created_to is not None and created > created_to:
            return False
    return True


def _event_name(kind: int) -> str:
    try:
        return EventType(kind).name.title().replace("_", "")
    except ValueError:
        return str(kind)


# What the extension drops from every event and per type (DurableClient.cs,
# GetDurableOrchestrationStatusAsync).
_ALWAYS_DROPPED = ("EventId", "IsPlayed")
_DROPPED = {
    EventType.TASK_SCHEDULED: ("Version",),
    EventType.SUB_ORCHESTRATION_INSTANCE_CREATED: ("Version",),
    EventType.EXECUTION_STARTED: ("OrchestrationInstance", "ParentInstance", "Version", "Tags"),
    EventType.TIMER_FIRED: ("TimerId",),
}
_SCHEDULER_OF = {EventType.TASK_COMPLETED: EventType.TASK_SCHEDULED,
                 EventType.TASK_FAILED: EventType.TASK_SCHEDULED,
                 EventType.SUB_ORCHESTRATION_INSTANCE_COMPLETED:
                     EventType.SUB_ORCHESTRATION_INSTANCE_CREATED,
                 EventType.SUB_ORCHESTRATION_INSTANCE_FAILED:
                     EventType.SUB_ORCHESTRATION_INSTANCE_CREATED}
_RESULT_SHOWN = (EventType.TASK_COMPLETED, EventType.SUB_ORCHESTRATION_INSTANCE_COMPLETED,
                 EventType.EXECUTION_COMPLETED)


def history_view(doc: dict[str, Any], with_output: bool,
                 show_input: bool = True) -> list[dict[str, Any]]:
    """`historyEvents` for `showHistory=true`, shaped as the Durable extension shapes them
    (durable-extension `DurableClient.GetDurableOrchestrationStatusAsync`):

    - `EventType` as its name; `EventId` and `IsPlayed` dropped; orchestrator start/complete
      markers dropped;
    - a completed or failed task or sub-orchestration absorbs its scheduling event, which is
      dropped: it gains `FunctionName`, `ScheduledTime` (the scheduling event's timestamp) and
      that event's `Input`, and loses `TaskScheduledId`; a still-pending scheduling event stays;
    - `ExecutionStarted` names the orchestrator `FunctionName`;
    - `Result` only with `showHistoryOutput=true` (parsed JSON), `Input` only with `showInput`.
    """
    history = doc["history"]
    schedulers: dict[tuple[int, int], int] = {}
    for index, ev in enumerate(history):
        if ev["EventType"] in (EventType.TASK_SCHEDULED,
                               EventType.SUB_ORCHESTRATION_INSTANCE_CREATED):
            schedulers[(ev["EventType"], ev.get("EventId", -1))] = index
    absorbed: set[int] = set()
    out: list[tuple[int, dict[str, Any]]] = []
    for index, ev in enumerate(history):
        kind = ev["EventType"]
        if kind in (EventType.ORCHESTRATOR_STARTED, EventType.ORCHESTRATOR_COMPLETED):
            continue
        item = {key: value for key, value in ev.items()
                if key not in _ALWAYS_DROPPED and key not in _DROPPED.get(kind, ())}
        if kind == EventType.EXECUTION_FAILED:
            # DurableTask.Core records a failure as ExecutionCompleted with status Failed.
            kind = EventType.EXECUTION_COMPLETED
            item = {"Timestamp": ev["Timestamp"], "OrchestrationStatus": "Failed",
                    "Result": ev.get("Reason")}
        item["EventType"] = _event_name(kind)
        if kind == EventType.EXECUTION_STARTED:
            item["FunctionName"] = item.pop("Name", None)
        scheduler = _SCHEDULER_OF.get(kind)
        if scheduler is not None:
            found = schedulers.get((scheduler, ev.get("TaskScheduledId", -2)))
            item.pop("TaskScheduledId", None)
            if found is not None:
                scheduled = history[found]
                absorbed.add(found)
                item["ScheduledTime"] = scheduled["Timestamp"]
                item["FunctionName"] = scheduled.get("Name")
                if show_input:
                    item["Input"] = scheduled.get("Input")
        if kind in _RESULT_SHOWN:
            if with_output and "Result" in item:
                item["Result"] = json_value(item["Result"])
            else:
                item.pop("Result", None)
        if not show_input:
            item.pop("Input", None)
        for key in ("Timestamp", "ScheduledTime", "FireAt"):
            if isinstance(item.get(key), str):
                item[key] = history_time(item[key])
        out.append((index, item))
    return [item for index, item in out if index not in absorbed]
