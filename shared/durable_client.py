"""What the triggers ask of the Durable client: status, start-once, and raising events.

Kept here (not in `blueprints/`) so every trigger starts and signals orchestrations the same
way. The SDK's client reports a refused event as a bare `Exception` whose only detail is its
message; instead of reading that text, a refusal is sorted by asking the instance's status.
"""
from __future__ import annotations

import logging
from typing import Any

import azure.durable_functions as df

from shared.api import ApiError, not_found, public_reason

log = logging.getLogger(__name__)

# Runtime statuses after which an instance takes no more events.
FINISHED = (df.OrchestrationRuntimeStatus.Completed, df.OrchestrationRuntimeStatus.Failed,
            df.OrchestrationRuntimeStatus.Terminated, df.OrchestrationRuntimeStatus.Canceled)


async def instance_status(client: df.DurableOrchestrationClient,
                          instance_id: str) -> dict | None:
    """An orchestration's status as the API shows it, or None when there is no such instance.
    A failed one's output (the host's message with a traceback) is logged, and callers get
    its first line without server paths."""
    status = await client.get_status(instance_id)
    if status is None or status.runtime_status is None:
        return None
    output = status.output
    if status.runtime_status == df.OrchestrationRuntimeStatus.Failed:
        log.warning("orchestration %s failed: %s", instance_id, output)
        output = public_reason(output)
    return {"runtimeStatus": status.runtime_status.value, "customStatus": status.custom_status,
            "createdTime": status.created_time, "lastUpdatedTime": status.last_updated_time,
            "input": status.input_, "output": output}


async def start_once(client: df.DurableOrchestrationClient, name: str, instance_id: str,
                     payload: Any) -> bool:
    """Start `name` as `instance_id` unless that instance exists; True if it was started.

    Deterministic instance ids make a repeated trigger (a double timer tick, a blob seen
    twice, a client retrying a request) start nothing new.
    """
    if await instance_status(client, instance_id) is not None:
        return False
    await client.start_new(name, instance_id, payload)
    return True


# A file whose orchestration ended this way was not processed: a new trigger starts it again.
RESTARTABLE = (df.OrchestrationRuntimeStatus.Failed, df.OrchestrationRuntimeStatus.Terminated,
               df.OrchestrationRuntimeStatus.Canceled)


async def start_or_restart(client: df.DurableOrchestrationClient, name: str, instance_id: str,
                           payload: Any) -> str:
    """Start `name` as `instance_id` unless it is pending, running or completed; an instance
    that failed, was terminated or canceled is started again under the same id. Returns
    "started", "restarted" or the status that made it leave the instance alone."""
    status = await client.get_status(instance_id)
    current = None if status is None else status.runtime_status
    if current is not None and current not in RESTARTABLE:
        return current.value
    await client.start_new(name, instance_id, payload)
    return "started" if current is None else "restarted"


async def raise_event(client: df.DurableOrchestrationClient, instance_id: str,
                      event_name: str, payload: Any) -> None:
    """Raise an event; a refusal becomes 404 (no such instance) or 410 (it has finished)."""
    try:
        await client.raise_event(instance_id, event_name, payload)
    except Exception:  # noqa: BLE001 - the SDK raises a bare Exception for every refusal
        status = await client.get_status(instance_id)
        if status is None or status.runtime_status is None:
            raise not_found("the job's orchestration does not exist") from None
        if status.runtime_status in FINISHED:
            raise ApiError(410, "JobFinished", "the job has already finished") from None
        raise
