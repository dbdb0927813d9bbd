"""History events and orchestrator actions in the wire format the Python SDK replays.

The Durable Task extension sends an orchestrator its whole history as JSON events
(`EventType`, `EventId`, `IsPlayed`, `Timestamp`, plus per-type fields) and gets back a state
whose action list is cumulative. These helpers build the events and flatten the actions so the
engine can give every scheduled task the same sequence number the SDK gives it.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from enum import IntEnum
from typing import Any

from dateutil.parser import isoparse

from devhost.durable.errors import InvalidRequestError


class EventType(IntEnum):
    """History event types (DurableTask.Core numbering, as the SDK expects)."""

    EXECUTION_STARTED = 0
    EXECUTION_COMPLETED = 1
    EXECUTION_FAILED = 2
    EXECUTION_TERMINATED = 3
    TASK_SCHEDULED = 4
    TASK_COMPLETED = 5
    TASK_FAILED = 6
    SUB_ORCHESTRATION_INSTANCE_CREATED = 7
    SUB_ORCHESTRATION_INSTANCE_COMPLETED = 8
    SUB_ORCHESTRATION_INSTANCE_FAILED = 9
    TIMER_CREATED = 10
    TIMER_FIRED = 11
    ORCHESTRATOR_STARTED = 12
    ORCHESTRATOR_COMPLETED = 13
    EVENT_SENT = 14
    EVENT_RAISED = 15
    EXECUTION_SUSPENDED = 19
    EXECUTION_RESUMED = 20


class ActionType(IntEnum):
    """Action types in the orchestrator state (the SDK's `ActionType`)."""

    CALL_ACTIVITY = 0
    CALL_ACTIVITY_WITH_RETRY = 1
    CALL_SUB_ORCHESTRATOR = 2
    CALL_SUB_ORCHESTRATOR_WITH_RETRY = 3
    CONTINUE_AS_NEW = 4
    CREATE_TIMER = 5
    WAIT_FOR_EXTERNAL_EVENT = 6
    CALL_ENTITY = 7
    CALL_HTTP = 8
    SIGNAL_ENTITY = 9
    WHEN_ANY = 11
    WHEN_ALL = 12


# Events that complete a task, and the field naming the task they complete.
COMPLETION_KEYS: dict[int, str] = {
    EventType.TASK_COMPLETED: "TaskScheduledId",
    EventType.TASK_FAILED: "TaskScheduledId",
    EventType.SUB_ORCHESTRATION_INSTANCE_COMPLETED: "TaskScheduledId",
    EventType.SUB_ORCHESTRATION_INSTANCE_FAILED: "TaskScheduledId",
    EventType.TIMER_FIRED: "TimerId",
}
SCHEDULING_TYPES = (EventType.TASK_SCHEDULED, EventType.SUB_ORCHESTRATION_INSTANCE_CREATED,
                    EventType.TIMER_CREATED)

# Instance ids and event names: the characters Azure Storage keys and URLs can carry.
_NAME_RE = re.compile(r"^[^/\\#?\x00-\x1f\x7f]{1,100}$")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(moment: datetime) -> str:
    """ISO-8601 UTC with a `Z`, microseconds included (what the SDK and dateutil read)."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(raw: str) -> datetime:
    """Parse an ISO-8601 timestamp; naive values are taken as UTC."""
    try:
        moment = isoparse(raw)
    except (ValueError, TypeError, OverflowError):
        raise InvalidRequestError(f"{raw!r} is not an ISO-8601 timestamp") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment


def check_name(value: str, what: str) -> str:
    """Reject ids and names that storage keys or URLs cannot carry unchanged."""
    if not isinstance(value, str) or not _NAME_RE.match(value) or value.startswith("@"):
        raise InvalidRequestError(
            f"{what} {value!r} is invalid: use 1-100 characters without / \\ # ? or control"
            " characters, not starting with @")
    return value


def event(kind: EventType, event_id: int = -1, timestamp: datetime | None = None,
          **fields: Any) -> dict[str, Any]:
    """One history event; `IsPlayed` is set when the history is sent to the orchestrator."""
    out: dict[str, Any] = {"EventType": int(kind), "EventId": event_id, "IsPlayed": False,
                           "Timestamp": iso(timestamp or utcnow())}
    out.update(fields)
    return out


def flatten_actions(actions: list[Any]) -> list[dict[str, Any]]:
    """The leaf actions of a cumulative action list, compounds expanded in order."""
    leaves: list[dict[str, Any]] = []

    def walk(items: list[Any]) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item)
            elif isinstance(item, dict):
                if item.get("actionType") in (ActionType.WHEN_ANY, ActionType.WHEN_ALL):
                    walk(item.get("compoundActions") or [])
                else:
                    leaves.append(item)

    walk(actions)
    return leaves


def takes_sequence_number(action: dict[str, Any]) -> bool:
    """External-event waits are keyed by name; every other action consumes a sequence id."""
    return action.get("actionType") != ActionType.WAIT_FOR_EXTERNAL_EVENT


def completed_ids(history: list[dict[str, Any]]) -> set[int]:
    """Task ids (activities, sub-orchestrations, timers) that already have their outcome."""
    done: set[int] = set()
    for ev in history:
        key = COMPLETION_KEYS.get(ev["EventType"])
        if key is not None:
            done.add(ev[key])
    return done


def outstanding(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Scheduling events (activity, sub-orchestration, timer) still waiting for an outcome."""
    done = completed_ids(history)
    return [ev for ev in history
            if ev["EventType"] in SCHEDULING_TYPES and ev["EventId"] not in done]
