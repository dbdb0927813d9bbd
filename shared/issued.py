"""Issued work items, kept beside their job row (`tblresult`, RowKey `item-STEP-ATTEMPT`).

The done callback must rebuild exactly the work item the app issued to verify its token and to
refuse answers for attempts that were never issued (an agent that sends the item's fields with
its report spares the read: the token proves them); the first acknowledgement of an attempt is
an insert of its row `ack-STEP-ATTEMPT`, so a repeated callback is a no-op.
"""
from __future__ import annotations

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient

from shared.clock import utcnow
from shared.workitem import WorkItem


def _row_key(step: int, attempt: int) -> str:
    return f"item-{step:03d}-{attempt:03d}"


def _ack_key(step: int, attempt: int) -> str:
    return f"ack-{step:03d}-{attempt:03d}"  # outside the item- range that step_keys reads


class IssuedItems:
    def __init__(self, table: TableClient) -> None:
        self.table = table

    def record(self, item: WorkItem) -> None:
        """Remember the issued item (without its token); repeat-safe."""
        try:
            self.table.create_entity({
                "PartitionKey": item.job_id, "RowKey": _row_key(item.step, item.attempt),
                "instanceId": item.instance_id, "step": item.step, "action": item.action,
                "blob": item.blob, "attempt": item.attempt,
                "issuedAt": utcnow()})
        except ResourceExistsError:
            pass

    def get(self, job_id: str, step: int, attempt: int) -> tuple[WorkItem, bool, str] | None:
        """(item, acknowledged?, etag) or None when this attempt was never issued."""
        try:
            row = self.table.get_entity(job_id, _row_key(step, attempt))
        except ResourceNotFoundError:
            return None
        item = WorkItem(job_id=job_id, instance_id=row["instanceId"], step=row["step"],
                        action=row["action"], blob=row["blob"], attempt=row["attempt"])
        return item, bool(row.get("ackedAt")), row.metadata["etag"]

    def acknowledge(self, job_id: str, step: int, attempt: int, vm: str) -> str | None:
        """Record the first accepted callback of an attempt (an insert, so of concurrent or
        repeated ones exactly one succeeds); its row's ETag, or None if another came first."""
        try:
            meta = self.table.create_entity({"PartitionKey": job_id,
                                             "RowKey": _ack_key(step, attempt),
                                             "ackedAt": utcnow(), "ackedBy": vm})
        except ResourceExistsError:
            return None
        return meta["etag"]

    def withdraw(self, job_id: str, step: int, attempt: int, etag: str) -> bool:
        """Undo an acknowledgement whose event could not be raised, so a retry raises it."""
        try:
            self.table.delete_entity(job_id, _ack_key(step, attempt), etag=etag,
                                     match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            return False
        return True

    def step_keys(self, job_id: str) -> list[str]:
        """Claim keys (`STEP-ATTEMPT`) of every item issued for the job."""
        rows = self.table.query_entities(
            "PartitionKey eq @job and RowKey ge 'item-' and RowKey lt 'item.'",
            parameters={"job": job_id}, select=["step", "attempt"])
        return [f"{row['step']:03d}-{row['attempt']:03d}" for row in rows]
