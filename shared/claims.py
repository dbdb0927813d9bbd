"""Claims: which VM works on which attempt of which job step (table `tblclaim`).

Agents compete for work items on one queue. Before an agent touches a file it claims the step
attempt here with a conditional write: an insert that fails if the row exists, or an ETag-matched
takeover of a claim whose holder stopped heartbeating (its VM died; the queue message became
visible again). So two VMs never process the same attempt at once, and a dead VM's work is not
lost. Row: PartitionKey = job id, RowKey = `step-attempt` (see `WorkItem.step_key`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from azure.core.exceptions import (
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import TableClient, UpdateMode

from shared.clock import utcnow
from shared.conditional import LookAgain, retry_on_conflict, update_if_unchanged
from shared.workitem import WorkItem

CLAIMED, DONE, FAILED, ABANDONED = "claimed", "done", "failed", "abandoned"
# The job was cancelled: nobody may (go on) work on the attempt, and its message is spent.
WITHDRAWN = "withdrawn"
FINISHED_STATES = (DONE, FAILED, ABANDONED, WITHDRAWN)


class ClaimError(Exception):
    """Base of claim conflicts."""


class AlreadyClaimed(ClaimError):
    """Another VM holds a live claim on this attempt."""

    def __init__(self, holder: str) -> None:
        super().__init__(f"step already claimed by {holder}")
        self.holder = holder


class AlreadyFinished(ClaimError):
    """The attempt is finished; the work item is spent."""

    def __init__(self, state: str) -> None:
        super().__init__(f"step already {state}")
        self.state = state


class ClaimLost(ClaimError):
    """The caller no longer holds the claim (taken over or finished elsewhere)."""


class ClaimWithdrawn(ClaimLost):
    """The job was cancelled: stop the action and drop the work item."""


@dataclass
class Claim:
    job_id: str
    step_key: str
    vm: str
    state: str
    instance_id: str = ""
    claimed_at: datetime | None = None
    heartbeat_at: datetime | None = None
    finished_at: datetime | None = None
    outcome: dict[str, Any] = field(default_factory=dict)
    etag: str = ""

    @classmethod
    def from_entity(cls, entity: Any) -> Claim:
        known = {"PartitionKey", "RowKey", "vm", "state", "instanceId", "claimedAt",
                 "heartbeatAt", "finishedAt"}
        return cls(job_id=entity["PartitionKey"], step_key=entity["RowKey"], vm=entity["vm"],
                   state=entity["state"], instance_id=entity.get("instanceId", ""),
                   claimed_at=entity.get("claimedAt"), heartbeat_at=entity.get("heartbeatAt"),
                   finished_at=entity.get("finishedAt"),
                   outcome={k: v for k, v in entity.items() if k not in known},
                   etag=entity.metadata.get("etag", ""))


def _written(entity: dict[str, Any], meta: dict[str, Any] | None) -> Claim:
    """The claim a create or replace of `entity` just stored (its answer carries the ETag),
    so the caller need not read it back."""
    return Claim(job_id=entity["PartitionKey"], step_key=entity["RowKey"], vm=entity["vm"],
                 state=entity["state"], instance_id=entity.get("instanceId", ""),
                 claimed_at=entity.get("claimedAt"), heartbeat_at=entity.get("heartbeatAt"),
                 etag=(meta or {}).get("etag", ""))


class ClaimStore:
    """Conditional reads and writes of claim rows."""

    def __init__(self, table: TableClient, stale_after: timedelta = timedelta(minutes=5)) -> None:
        self.table = table
        self.stale_after = stale_after

    def get(self, job_id: str, step_key: str) -> Claim | None:
        try:
            return Claim.from_entity(self.table.get_entity(job_id, step_key))
        except ResourceNotFoundError:
            return None

    def claim(self, item: WorkItem, vm: str, now: datetime | None = None) -> Claim:
        """Claim `item` for `vm`; idempotent for the holder, a takeover only of a stale claim."""
        now = now or utcnow()
        entity = {"PartitionKey": item.job_id, "RowKey": item.step_key, "vm": vm,
                  "state": CLAIMED, "instanceId": item.instance_id, "claimedAt": now,
                  "heartbeatAt": now}

        def attempt() -> Claim:
            try:
                return _written(entity, self.table.create_entity(entity))
            except ResourceExistsError:
                pass
            current = self.get(item.job_id, item.step_key)
            if current is None:
                raise LookAgain  # deleted between the two calls; try the insert again
            if current.state in (DONE, FAILED, WITHDRAWN):
                raise AlreadyFinished(current.state)
            if current.vm == vm and current.state == CLAIMED:
                return current
            beat = current.heartbeat_at or current.claimed_at
            if (current.state == CLAIMED and beat is not None
                    and now - beat < self.stale_after):
                raise AlreadyClaimed(current.vm)
            return _written(entity, update_if_unchanged(self.table, entity, current.etag,
                                                        UpdateMode.REPLACE))

        return retry_on_conflict(attempt, lambda: AlreadyClaimed("unknown (contention)"))

    def heartbeat(self, item: WorkItem, vm: str, now: datetime | None = None,
                  known: Claim | None = None) -> Claim:
        """Refresh the holder's heartbeat; raise `ClaimLost` if `vm` no longer holds it.
        `known` is the claim as the holder last wrote it: its ETag guards the write without
        a read (a withdraw or takeover since makes it stale, and then the row is read)."""
        current = known if known is not None and known.etag else self.get(item.job_id,
                                                                            item.step_key)
        if current is not None and current.state == WITHDRAWN:
            raise ClaimWithdrawn(f"{item.job_id}/{item.step_key} was withdrawn (job cancelled)")
        if current is None or current.vm != vm or current.state != CLAIMED:
            raise ClaimLost(f"{vm} does not hold {item.job_id}/{item.step_key}")
        stamp = now or utcnow()
        try:
            meta = update_if_unchanged(self.table, {"PartitionKey": item.job_id,
                                                    "RowKey": item.step_key,
                                                    "heartbeatAt": stamp}, current.etag)
        except ResourceModifiedError:
            if current is known:  # changed since the holder's last write: see by whom
                return self.heartbeat(item, vm, now)
            raise ClaimLost(f"{item.job_id}/{item.step_key} changed under {vm}") from None
        return replace(current, heartbeat_at=stamp, etag=(meta or {}).get("etag", ""))

    def finish(self, job_id: str, step_key: str, vm: str, state: str,
               outcome: dict[str, Any] | None = None, now: datetime | None = None,
               known: Claim | None = None) -> Claim:
        """Mark the attempt finished by its holder. Repeating the same finish is harmless.
        `known` (the holder's last write) spares the read while nothing else changed it."""
        if state not in FINISHED_STATES:
            raise ValueError(f"not a finished state: {state}")
        held = [known] if known is not None and known.etag else []

        def attempt() -> Claim:
            current = held.pop() if held else self.get(job_id, step_key)
            if current is None or current.vm != vm:
                raise ClaimLost(f"{vm} does not hold {job_id}/{step_key}")
            if current.state in FINISHED_STATES:
                if current.state == state:
                    return current
                raise AlreadyFinished(current.state)
            stamp = now or utcnow()
            meta = update_if_unchanged(self.table, {"PartitionKey": job_id, "RowKey": step_key,
                                                    "state": state, "finishedAt": stamp,
                                                    **(outcome or {})}, current.etag)
            # What the merge wrote, on the row the ETag proved current: no read needed.
            return replace(current, state=state, finished_at=stamp,
                           outcome={**current.outcome, **(outcome or {})},
                           etag=(meta or {}).get("etag", ""))

        return retry_on_conflict(
            attempt, lambda: ClaimLost(f"{job_id}/{step_key}: too much contention"))

    def withdraw(self, job_id: str, step_key: str, now: datetime | None = None) -> str:
        """Withdraw an attempt of a cancelled job, claimed or not; returns the state it was in
        ("" when nobody had claimed it). Finished attempts stay as they are."""
        now = now or utcnow()
        entity = {"PartitionKey": job_id, "RowKey": step_key, "vm": "", "state": WITHDRAWN,
                  "finishedAt": now}

        def attempt() -> str:
            current = self.get(job_id, step_key)
            if current is None:
                try:
                    self.table.create_entity(entity)
                except ResourceExistsError:
                    raise LookAgain from None  # claimed meanwhile: withdraw that claim
                return ""
            if current.state != CLAIMED:
                return current.state
            update_if_unchanged(self.table, {**entity, "vm": current.vm}, current.etag)
            return CLAIMED

        return retry_on_conflict(
            attempt, lambda: ClaimLost(f"{job_id}/{step_key}: too much contention"))

    def withdrawn(self) -> set[tuple[str, str]]:
        """(job id, step key) of every withdrawn attempt, for the scaler's backlog count."""
        rows = self.table.query_entities(f"state eq '{WITHDRAWN}'",
                                         select=["PartitionKey", "RowKey"])
        return {(row["PartitionKey"], row["RowKey"]) for row in rows}

    def active(self) -> list[Claim]:
        """Claims still being worked on (for the scaler: busy VMs and stale holders)."""
        rows = self.table.query_entities(f"state eq '{CLAIMED}'")
        return [Claim.from_entity(row) for row in rows]

    def abandon_stale(self, now: datetime | None = None) -> list[Claim]:
        """Mark claims whose holder stopped heartbeating as abandoned; returns them.

        An abandoned attempt stays open: the next agent that receives its message takes it over.
        """
        now = now or utcnow()
        return self._abandon([claim for claim in self.active()
                              if (beat := claim.heartbeat_at or claim.claimed_at) is not None
                              and now - beat >= self.stale_after], now)

    def abandon_held_by(self, vm: str, before: datetime, now: datetime | None = None
                        ) -> list[Claim]:
        """Abandon the claims `vm` took or heartbeated before `before`: the machine is known to
        be gone, so its work need not wait for the claims to go stale."""
        return self._abandon([claim for claim in self.active() if claim.vm == vm
                              and (claim.heartbeat_at or claim.claimed_at or before) < before],
                             now or utcnow())

    def _abandon(self, claims: list[Claim], now: datetime) -> list[Claim]:
        abandoned = []
        for claim in claims:
            try:
                update_if_unchanged(self.table, {"PartitionKey": claim.job_id,
                                                 "RowKey": claim.step_key, "state": ABANDONED,
                                                 "finishedAt": now}, claim.etag)
                abandoned.append(claim)
            except (ResourceModifiedError, ResourceNotFoundError):
                continue
        return abandoned
