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


def status_of(doc: dict[str, Any], show_input: bool) -> dict[str, Any]:
    """The status JSON of the Durable HTTP API for one instance's state document."""
    return {
        "name": doc["name"], "instanceId": doc["instanceId"],
        "runtimeStatus": doc["status"],
        "input": json_value(doc.get("input")) if show_input else None,
        "customStatus": json_value(doc.get("customStatus")),
        "output": json_value(doc.get("output")),
        "createdTime": doc["createdTime"], "lastUpdatedTime": doc["lastUpdatedTime"],
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


def history_view(doc: dict[str, Any], with_output: bool) -> list[dict[str, Any]]:
    """A readable history for `showHistory=true`, in the shape the HTTP API uses."""
    names = {kind.value: kind.name.title().replace("_", "") for kind in EventType}
    out = []
    for ev in doc["history"]:
        kind = ev["EventType"]
        if kind in (EventType.ORCHESTRATOR_STARTED, EventType.ORCHESTRATOR_COMPLETED):
            continue
        item: dict[str, Any] = {"EventType": names.get(kind, str(kind)),
                                "Timestamp": ev["Timestamp"]}
        if ev.get("EventId", -1) >= 0:
            item["EventId"] = ev["EventId"]
        for key in ("Name", "InstanceId", "FireAt", "TaskScheduledId", "TimerId", "Reason",
                    "OrchestrationStatus"):
            if ev.get(key) is not None:
                item[key] = ev[key]
        if with_output:
            for key in ("Input", "Result"):
                if ev.get(key) is not None:
                    item[key] = json_value(ev[key])
        out.append(item)
    return out
