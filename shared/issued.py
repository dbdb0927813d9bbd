"""Issued work items, kept beside their job row (`tblresult`, RowKey `item-STEP-ATTEMPT`).

The done callback must rebuild exactly the work item the app issued to verify its token and to
refuse answers for attempts that were never issued; it also records the first acknowledgement
so a repeated callback is a no-op.
"""
from __future__ import annotations

from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient

from shared.clock import utcnow
from shared.conditional import update_if_unchanged
from shared.workitem import WorkItem


def _row_key(step: int, attempt: int) -> str:
    return f"item-{step:03d}-{attempt:03d}"


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

    def acknowledge(self, job_id: str, step: int, attempt: int, etag: str, vm: str
                    ) -> str | None:
        """Mark the first accepted callback; the row's new ETag, or None if another request
        acknowledged first."""
        try:
            meta = update_if_unchanged(self.table, {"PartitionKey": job_id,
                                                    "RowKey": _row_key(step, attempt),
                                                    "ackedAt": utcnow(), "ackedBy": vm}, etag)
        except ResourceModifiedError:
            return None
        return meta["etag"]

    def withdraw(self, job_id: str, step: int, attempt: int, etag: str) -> bool:
        """Undo an acknowledgement whose event could not be raised, so a retry raises it."""
        try:
            update_if_unchanged(self.table, {"PartitionKey": job_id,
                                             "RowKey": _row_key(step, attempt),
                                             "ackedAt": "", "ackedBy": ""}, etag)
        except ResourceModifiedError:
            return False
        return True

    def step_keys(self, job_id: str) -> list[str]:
        """Claim keys (`STEP-ATTEMPT`) of every item issued for the job."""
        rows = self.table.query_entities(
            "PartitionKey eq @job and RowKey ge 'item-' and RowKey lt 'item.'",
            parameters={"job": job_id}, select=["step", "attempt"])
        return [f"{row['step']:03d}-{row['attempt']:03d}" for row in rows]
