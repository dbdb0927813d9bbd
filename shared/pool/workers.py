"""Ephemeral workers: agents that are not pool members (Kubernetes pods, any other machine).

Such an agent has no row of its own in the pool and nothing for the scaler to start or stop, but
operators still want to see who is working. Each one upserts a heartbeat row in the pool table
under its own partition (`worker`), so the pool's rows (partition `vm`) and everything that
reads them stay as they are. A row says when the agent started and last beat, how many of its
slots are busy, which agent version it runs, and whether it stopped cleanly; a row whose agent
vanished (SIGKILL, evicted pod) simply stops beating and is pruned after a while.

Callbacks never look here: a done report is proven by the signed work item and the claim.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from shared.clock import utcnow
from shared.contracts import validate_vm_name

PARTITION = "worker"
RUNNING, STOPPED = "running", "stopped"


@dataclass(frozen=True)
class WorkerRecord:
    """One ephemeral worker's last heartbeat."""

    name: str
    state: str
    slots: int
    busy: int
    started_at: datetime
    last_heartbeat: datetime
    agent_version: str = ""

    def alive(self, timeout: timedelta, now: datetime | None = None) -> bool:
        """Beating recently and not stopped."""
        return self.state == RUNNING and (now or utcnow()) - self.last_heartbeat < timeout

    def to_api(self, timeout: timedelta, now: datetime | None = None) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "alive": self.alive(timeout, now),
                "slots": self.slots, "busy": self.busy,
                "startedAt": self.started_at.isoformat(),
                "lastHeartbeat": self.last_heartbeat.isoformat(),
                "agentVersion": self.agent_version or None}

    @classmethod
    def from_entity(cls, entity: Any) -> WorkerRecord:
        beat = entity.get("lastHeartbeat") or utcnow()
        return cls(name=entity["RowKey"], state=entity.get("state", RUNNING),
                   slots=int(entity.get("slots", 1)), busy=int(entity.get("busy", 0)),
                   started_at=entity.get("startedAt") or beat, last_heartbeat=beat,
                   agent_version=entity.get("agentVersion", ""))


class WorkerRegistry:
    """Heartbeat rows of ephemeral workers. Each row has one writer (its agent), so a plain
    merge is safe: no ETag races to lose."""

    def __init__(self, table: TableClient) -> None:
        self.table = table

    def heartbeat(self, name: str, *, slots: int, busy: int, started_at: datetime,
                  agent_version: str = "", state: str = RUNNING,
                  now: datetime | None = None) -> None:
        validate_vm_name(name)
        if state not in (RUNNING, STOPPED):
            raise ValueError(f"unknown worker state {state!r}")
        self.table.upsert_entity({
            "PartitionKey": PARTITION, "RowKey": name, "state": state, "slots": int(slots),
            "busy": int(busy), "startedAt": started_at, "lastHeartbeat": now or utcnow(),
            "agentVersion": agent_version}, mode=UpdateMode.REPLACE)

    def get(self, name: str) -> WorkerRecord | None:
        try:
            return WorkerRecord.from_entity(self.table.get_entity(PARTITION, name))
        except ResourceNotFoundError:
            return None

    def list(self) -> list[WorkerRecord]:
        rows = self.table.query_entities(f"PartitionKey eq '{PARTITION}'")
        return sorted((WorkerRecord.from_entity(r) for r in rows), key=lambda w: w.name)

    def prune(self, older_than: timedelta, now: datetime | None = None) -> list[str]:
        """Delete rows that have not beaten for `older_than` (pods long gone)."""
        cutoff = (now or utcnow()) - older_than
        gone = []
        for worker in self.list():
            if worker.last_heartbeat < cutoff:
                try:
                    self.table.delete_entity(PARTITION, worker.name)
                except ResourceNotFoundError:
                    pass
                gone.append(worker.name)
        return gone
