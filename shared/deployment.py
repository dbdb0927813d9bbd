"""The deployment gate's answer: are orchestrations pending or running in this task hub?

A slot swap or a restart while instances run is safe only with versioned orchestrations; the
status-check strategy waits until this says `hasRunning: false`.
"""
from __future__ import annotations

from typing import Any

from azure.durable_functions.models.OrchestrationRuntimeStatus import OrchestrationRuntimeStatus

ACTIVE = (OrchestrationRuntimeStatus.Pending, OrchestrationRuntimeStatus.Running,
          OrchestrationRuntimeStatus.ContinuedAsNew, OrchestrationRuntimeStatus.Suspended)


async def deployment_status(client: Any, task_hub: str) -> dict[str, Any]:
    instances = await client.get_status_by(runtime_status=list(ACTIVE))
    counts = {status.value.lower(): 0 for status in ACTIVE}
    by_name: dict[str, int] = {}
    for instance in instances:
        key = instance.runtime_status.value.lower() if instance.runtime_status else "pending"
        counts[key] = counts.get(key, 0) + 1
        by_name[instance.name or "?"] = by_name.get(instance.name or "?", 0) + 1
    total = sum(counts.values())
    return {"hasRunning": total > 0, "active": total, **counts, "byOrchestrator": by_name,
            "taskHub": task_hub}
