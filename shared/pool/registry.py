"""The pool table (`tblvm`): one row per VM, its state and its busy slots.

Scalers, agents and the API all write these rows at the same time, so every change is a
read-modify-write with the row's ETag (`IfNotModified`). A write that loses the race is retried
on fresh data (bounded, with jittered backoff) and the rule is checked again: a slot is never
handed out twice, and a VM that took work after the scaler looked is never deallocated. An
agent writing its own VM's row starts from the row its last write left (`OwnRow`) and reads
only when that write is refused.
Row: PartitionKey "vm", RowKey = VM name.
"""
from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from shared import telemetry
from shared.clock import utcnow
from shared.conditional import (
    CONTENTION,
    LookAgain,
    delete_if_unchanged,
    retry_on_conflict,
    update_if_unchanged,
)
from shared.contracts import VmPriority, VmState, is_valid_vm_name, validate_vm_name

__all__ = ["ACCEPTING", "STOPPING", "InvalidAddress", "InvalidTransition", "NotRemovable",
           "OwnRow", "PoolRegistry", "RegistryContention", "RegistryError", "UnknownVm", "VmBusy",
           "VmPriority", "VmRecord", "VmState"]

PARTITION = "vm"
BILLED = "billed"   # closed billing intervals, in the same table
MAX_REASON = 2000          # characters of a failure reason kept in the row


ACCEPTING = (VmState.STARTING, VmState.RUNNING)      # states in which an agent may take a slot
STOPPING = (VmState.DEALLOCATING, VmState.DEALLOCATED)  # states a VM holding work may not enter


class RegistryError(Exception):
    """Base of pool registry errors."""


class UnknownVm(RegistryError, KeyError):
    """The VM is not a member of the pool."""

    def __init__(self, vm: str) -> None:
        super().__init__(f"VM {vm!r} is not a member of the pool")
        self.vm = vm

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


class InvalidTransition(RegistryError, ValueError):
    """The VM is not in a state from which the requested change is allowed."""


class VmBusy(InvalidTransition):
    """The VM holds work (busy slots), so it may not be stopped or removed."""


class NotRemovable(InvalidTransition):
    """Only a deallocated VM without work may leave the pool."""


class RegistryContention(RegistryError):
    """A row kept changing under us; the write was not made."""


class InvalidAddress(RegistryError, ValueError):
    """An address reported for a VM is not an IP address."""


@dataclass
class VmRecord:
    """One pool row. Times are timezone-aware UTC datetimes."""

    name: str
    backend_id: str
    slots: int
    state: VmState
    busy: int
    last_activity: datetime
    last_heartbeat: datetime | None
    state_since: datetime
    private_ip: str = ""
    public_ip: str = ""
    reason: str = ""           # why the VM failed, or the last backend error
    operation: str = ""        # JSON handle of the backend operation in flight, if any
    boot_seconds: float = 0.0  # how long the last start took until the agent was seen
    priority: VmPriority = VmPriority.REGULAR  # on-demand or spot
    agent_version: str = ""    # what the VM's agent reported in its last heartbeat
    # Until when a pool change (stop, remove) has this VM in hand: the scaler's policy leaves
    # it alone, or its warm floor would start again what the change is stopping. Each step of
    # the change renews it, so a change that failed or was cancelled lets go on its own.
    held_until: datetime | None = None
    # Billing: the open interval (from the start request; None while deallocated), the seconds
    # of every closed interval, and the boot seconds of the open one (-1: not up yet).
    billed_since: datetime | None = None
    billed_seconds: float = 0.0
    interval_boot_s: float = -1.0
    etag: str = ""

    def held(self, now: datetime) -> bool:
        return self.held_until is not None and self.held_until > now

    @property
    def free(self) -> int:
        return max(0, self.slots - self.busy)

    @property
    def accepting(self) -> bool:
        return self.state in ACCEPTING and self.busy < self.slots

    def to_entity(self) -> dict[str, Any]:
        entity: dict[str, Any] = {
            "PartitionKey": PARTITION, "RowKey": self.name, "backendId": self.backend_id,
            "slots": self.slots, "state": self.state.value, "busy": self.busy,
            "lastActivity": self.last_activity, "stateSince": self.state_since,
            "privateIp": self.private_ip, "publicIp": self.public_ip, "reason": self.reason,
            "operation": self.operation, "bootSeconds": float(self.boot_seconds),
            "priority": self.priority.value, "agentVersion": self.agent_version,
            "billedSeconds": float(self.billed_seconds),
            "intervalBootSeconds": float(self.interval_boot_s),
        }
        if self.billed_since is not None:
            entity["billedSince"] = self.billed_since
        if self.held_until is not None:
            entity["heldUntil"] = self.held_until
        if self.last_heartbeat is not None:
            entity["lastHeartbeat"] = self.last_heartbeat
        return entity

    @classmethod
    def from_entity(cls, entity: Any) -> VmRecord:
        return cls(
            name=entity["RowKey"], backend_id=entity.get("backendId", ""),
            slots=int(entity.get("slots", 1)), state=VmState(entity.get("state", "deallocated")),
            busy=int(entity.get("busy", 0)), last_activity=entity.get("lastActivity") or utcnow(),
            last_heartbeat=entity.get("lastHeartbeat"),
            state_since=entity.get("stateSince") or utcnow(),
            private_ip=entity.get("privateIp", ""), public_ip=entity.get("publicIp", ""),
            reason=entity.get("reason", ""), operation=entity.get("operation", ""),
            boot_seconds=float(entity.get("bootSeconds", 0.0)),
            priority=VmPriority(entity.get("priority") or VmPriority.REGULAR.value),
            agent_version=entity.get("agentVersion", ""),
            billed_since=entity.get("billedSince"),
            billed_seconds=float(entity.get("billedSeconds", 0.0)),
            interval_boot_s=float(entity.get("intervalBootSeconds", -1.0)),
            held_until=entity.get("heldUntil"),
            etag=entity.metadata.get("etag", ""))

    def billed_now(self, now: datetime) -> float:
        """Billed seconds so far, the open interval included."""
        open_s = _elapsed(self.billed_since, now) if self.billed_since else 0.0
        return self.billed_seconds + open_s


# Fields a caller may set along with a transition; everything else is the registry's business.
_TRANSITION_FIELDS = {"backend_id", "private_ip", "public_ip", "reason", "operation", "busy",
                      "last_activity", "boot_seconds", "billed_since"}


def _check_address(value: Any) -> str:
    if value in (None, ""):
        return ""
    try:
        return str(ipaddress.ip_address(str(value).strip()))
    except ValueError:
        raise InvalidAddress(f"{value!r} is not an IP address") from None


class PoolRegistry:
    """ETag-guarded reads and writes of the pool table."""

    def __init__(self, table: TableClient) -> None:
        self.table = table

    # --- reads -----------------------------------------------------------------------------

    def get(self, vm: str) -> VmRecord:
        if not is_valid_vm_name(vm):
            raise UnknownVm(str(vm))
        try:
            return VmRecord.from_entity(self.table.get_entity(PARTITION, vm))
        except ResourceNotFoundError:
            raise UnknownVm(vm) from None

    def list(self) -> list[VmRecord]:
        rows = self.table.query_entities(f"PartitionKey eq '{PARTITION}'")
        return sorted((VmRecord.from_entity(row) for row in rows), key=lambda r: r.name)

    # --- membership ------------------------------------------------------------------------

    def ensure_members(self, names: Iterable[str], slots: int,
                       backend_ids: Mapping[str, str] | None = None,
                       spot: Iterable[str] = ()) -> list[str]:
        """Add missing members as deallocated; returns the names newly added.

        Existing rows keep their state; their slot count, backend id and priority (spot for
        the names in `spot`) follow the arguments (so a changed `VM_SLOTS` takes effect
        without losing track of busy slots).
        """
        spot = set(spot)
        names = [validate_vm_name(n) for n in names]
        if not isinstance(slots, int) or isinstance(slots, bool) or not 1 <= slots <= 256:
            raise ValueError(f"slots must be an integer from 1 to 256, got {slots!r}")
        backend_ids = dict(backend_ids or {})
        existing = {rec.name: rec for rec in self.list()}  # one query instead of N conflicts
        added: list[str] = []
        for name in names:
            wanted_id = backend_ids.get(name)
            priority = VmPriority.SPOT if name in spot else VmPriority.REGULAR
            current = existing.get(name)
            if current is not None and current.slots == slots and (
                    wanted_id is None or wanted_id == current.backend_id) and (
                    current.priority == priority):
                continue
            if current is None:
                now = utcnow()
                record = VmRecord(name=name, backend_id=wanted_id or name, slots=slots,
                                  state=VmState.DEALLOCATED, busy=0, last_activity=now,
                                  last_heartbeat=None, state_since=now, priority=priority)
                try:
                    self.table.create_entity(record.to_entity())
                    added.append(name)
                    continue
                except ResourceExistsError:
                    pass  # added by someone else since the query

            def update(rec: VmRecord, wanted_id: str | None = wanted_id,
                       priority: VmPriority = priority) -> VmRecord | None:
                new_id = wanted_id or rec.backend_id
                if rec.slots == slots and rec.backend_id == new_id and rec.priority == priority:
                    return None
                return replace(rec, slots=slots, backend_id=new_id, priority=priority)

            self._mutate(name, update)
        return added

    def remove_member(self, vm: str) -> None:
        """Delete a member's row; only a deallocated VM without work may leave."""

        def remove() -> None:
            rec = self.get(vm)
            if rec.busy > 0:
                raise VmBusy(f"VM {vm!r} holds {rec.busy} busy slot(s); it cannot be removed")
            if rec.state not in (VmState.DEALLOCATED, VmState.EVICTED):
                raise NotRemovable(
                    f"VM {vm!r} is {rec.state.value}; only a deallocated VM can be removed")
            try:
                delete_if_unchanged(self.table, PARTITION, vm, rec.etag)
            except ResourceNotFoundError:
                pass

        retry_on_conflict(remove, lambda: RegistryContention(
            f"VM {vm!r}: the row kept changing; not removed"))

    # --- state changes ---------------------------------------------------------------------

    def transition(self, vm: str, to_state: VmState | str, allowed_from: Iterable[VmState | str],
                   now: datetime | None = None, **fields_: Any) -> VmRecord:
        """Move `vm` to `to_state` if it is in one of `allowed_from`; set `fields_` with it.

        Entering deallocating or deallocated is refused (`VmBusy`) while the VM holds work.
        """
        target = VmState(to_state)
        allowed = {VmState(s) for s in allowed_from}
        unknown = set(fields_) - _TRANSITION_FIELDS
        if unknown:
            raise TypeError(f"transition() cannot set {', '.join(sorted(unknown))}")
        if "reason" in fields_:
            fields_["reason"] = str(fields_["reason"])[:MAX_REASON]
        if "private_ip" in fields_:
            fields_["private_ip"] = _check_address(fields_["private_ip"])
        if "public_ip" in fields_:
            fields_["public_ip"] = _check_address(fields_["public_ip"])

        def change(rec: VmRecord) -> VmRecord:
            if rec.state not in allowed:
                raise InvalidTransition(
                    f"VM {vm!r} is {rec.state.value}; cannot move to {target.value} (allowed "
                    f"from {', '.join(sorted(s.value for s in allowed)) or 'nothing'})")
            new = replace(rec, **fields_)
            if not 0 <= new.busy <= max(new.slots, rec.busy):
                raise ValueError(f"busy must be between 0 and {new.slots}, got {new.busy}")
            if target in STOPPING and new.busy > 0:
                raise VmBusy(f"VM {vm!r} holds {new.busy} busy slot(s); it cannot be "
                             f"{target.value}")
            stamp = now or utcnow()
            if rec.state != target:
                new.state = target
                new.state_since = stamp
                if target == VmState.RUNNING and rec.state == VmState.STARTING:
                    _came_up(rec, new, stamp)
                if target == VmState.RUNNING and "last_activity" not in fields_ and (
                        rec.state != VmState.DRAINING):
                    new.last_activity = stamp  # the idle cooldown starts when it comes up
                closed.clear()
                closed.extend(_bill(rec, new, stamp))
            return new

        closed: list[dict[str, Any]] = []
        record = self._mutate(vm, change)
        for interval in closed:
            self.record_interval(interval)
        return record

    # --- billing ---------------------------------------------------------------------------

    def record_interval(self, interval: dict[str, Any]) -> None:
        """A closed billed interval, kept for per-day and per-run cost (repeat-safe: keyed by
        its VM and start)."""
        self.table.upsert_entity({"PartitionKey": BILLED, "RowKey":
                                  f"{interval['vm']}-{interval['start'].isoformat()}",
                                  **interval})

    def intervals(self, since: datetime | None = None, vm: str | None = None
                  ) -> list[dict[str, Any]]:
        """Closed billed intervals (that ended at or after `since`; of `vm` only)."""
        query, params = "PartitionKey eq @p", {"p": BILLED}
        if since is not None:
            query += " and end ge @since"
            params["since"] = since
        if vm is not None:
            # Row keys are `{vm}-{start}`: a key range reads only this VM's rows ('.' sorts
            # right after '-'); a longer name sharing the prefix is filtered out below.
            query += " and RowKey ge @lo and RowKey lt @hi"
            params.update(lo=f"{vm}-", hi=f"{vm}.")
        rows = self.table.query_entities(query, parameters=params)
        return [row for row in rows if vm is None or row.get("vm") == vm]

    def claim_slot(self, vm: str, now: datetime | None = None) -> bool:
        """Take one slot on `vm` for an agent; False if the VM is full or not accepting work.

        A claim on a starting VM proves its agent is up, so the VM becomes running.
        """
        return self._claim_slot(vm, now)[0]

    def _claim_slot(self, vm: str, now: datetime | None = None,
                    known: VmRecord | None = None) -> tuple[bool, VmRecord]:
        taken = False

        def claim(rec: VmRecord) -> VmRecord | None:
            nonlocal taken
            taken = False
            if not rec.accepting:
                return None
            stamp = now or utcnow()
            new = replace(rec, busy=rec.busy + 1, last_activity=stamp)
            if rec.state == VmState.STARTING:
                new.state, new.state_since = VmState.RUNNING, stamp
                _came_up(rec, new, stamp)
            taken = True
            return new

        record = self._mutate(vm, claim, known)
        return taken, record

    def release_slot(self, vm: str, now: datetime | None = None) -> None:
        """Give a slot back (never below zero) and note the activity for the idle cooldown."""
        self._release_slot(vm, now)

    def _release_slot(self, vm: str, now: datetime | None = None,
                      known: VmRecord | None = None) -> VmRecord:
        def release(rec: VmRecord) -> VmRecord:
            return replace(rec, busy=max(0, rec.busy - 1), last_activity=now or utcnow())

        return self._mutate(vm, release, known)

    def heartbeat(self, vm: str, addresses: dict | None = None,
                  now: datetime | None = None, agent_version: str | None = None) -> None:
        """Record that the agent on `vm` is alive (and where, and which version it runs); a
        starting VM becomes running."""
        self._heartbeat(vm, addresses, now, agent_version)

    def _heartbeat(self, vm: str, addresses: dict | None = None, now: datetime | None = None,
                   agent_version: str | None = None, known: VmRecord | None = None
                   ) -> VmRecord:
        updates: dict[str, str] = {}
        for key, value in (addresses or {}).items():
            if key not in ("private_ip", "public_ip"):
                raise InvalidAddress(f"unknown address kind {key!r} (private_ip or public_ip)")
            updates[key] = _check_address(value)

        def beat(rec: VmRecord) -> VmRecord:
            stamp = now or utcnow()
            new = replace(rec, last_heartbeat=stamp, **updates)
            if agent_version is not None:
                new.agent_version = agent_version
            if rec.state == VmState.STARTING:
                new.state, new.state_since = VmState.RUNNING, stamp
                _came_up(rec, new, stamp)
                new.last_activity = stamp  # the idle cooldown starts when the VM is up
            return new

        return self._mutate(vm, beat, known)

    # --- the conditional write -------------------------------------------------------------

    def hold(self, vm: str, until: datetime | None) -> VmRecord:
        """Keep the scaler's policy off `vm` until `until` (None: let go)."""
        def change(rec: VmRecord) -> VmRecord | None:
            if rec.held_until == until:
                return None
            rec.held_until = until
            return rec

        return self._mutate(vm, change)

    def _mutate(self, vm: str, change: Callable[[VmRecord], VmRecord | None],
                known: VmRecord | None = None) -> VmRecord:
        """Read, apply `change`, write with the ETag; retry on fresh data if the row moved.

        `change` returns the new record, or None when nothing needs writing; it may raise to
        refuse, and then nothing is written. `known` is the row as this caller last wrote it:
        the first attempt starts from it instead of a read. Only a write that its ETag lets
        through proves it current, so a refusal or a no-op decided on it is decided again on
        a fresh read, and a 412 (someone else wrote the row since) reads and retries.
        """
        kept = [known] if known is not None else []

        def attempt() -> VmRecord:
            rec = kept.pop() if kept else None
            trusted = rec is None
            if rec is None:
                rec = self.get(vm)
            try:
                new = change(replace(rec))
            except (RegistryError, ValueError):
                if trusted:
                    raise
                raise LookAgain from None
            if new is None:
                if trusted:
                    return rec
                raise LookAgain
            try:
                meta = update_if_unchanged(self.table, new.to_entity(), rec.etag,
                                           UpdateMode.REPLACE)
            except ResourceNotFoundError:
                raise UnknownVm(vm) from None
            new.etag = (meta or {}).get("etag", "")
            if new.state != rec.state:  # committed once: the ETag let only this write through
                telemetry.vm_state_changed(vm, rec.state.value, new.state.value,
                                           rec.state_since, new.state_since, new.boot_seconds)
            return new

        return retry_on_conflict(attempt, lambda: RegistryContention(
            f"VM {vm!r}: the row kept changing; gave up after {CONTENTION.attempts} attempts"))


class OwnRow:
    """One VM's pool row as its own agent last wrote it, so the agent's next write needs no read.

    The agent writes its VM's row more than anyone: a slot claim and a release per job and a
    heartbeat every few seconds. Each write returns the row's new ETag, and the next write goes
    out conditioned on it (the same ETag guard as a read-modify-write: the rules are checked
    on exactly the row that gets replaced). When anyone else wrote the row in between, the
    write fails with 412 and is redone on a fresh read. Writes are serialised here, so the
    agent's own slots never race one another for the row.
    """

    def __init__(self, registry: PoolRegistry, vm: str) -> None:
        self.registry = registry
        self.vm = vm
        self._lock = threading.Lock()
        self._record: VmRecord | None = None

    def claim_slot(self, now: datetime | None = None) -> bool:
        """`PoolRegistry.claim_slot` for this VM."""
        taken = False

        def claim(known: VmRecord | None) -> VmRecord:
            nonlocal taken
            taken, record = self.registry._claim_slot(self.vm, now, known)
            return record

        self._write(claim)
        return taken

    def release_slot(self, now: datetime | None = None) -> None:
        """`PoolRegistry.release_slot` for this VM."""
        self._write(lambda known: self.registry._release_slot(self.vm, now, known))

    def heartbeat(self, now: datetime | None = None, agent_version: str | None = None) -> None:
        """`PoolRegistry.heartbeat` for this VM."""
        self._write(lambda known: self.registry._heartbeat(self.vm, None, now, agent_version,
                                                           known))

    def _write(self, write: Callable[[VmRecord | None], VmRecord]) -> None:
        with self._lock:
            known, self._record = self._record, None  # unknown again if the write fails
            self._record = write(known)


def _came_up(rec: VmRecord, new: VmRecord, stamp: datetime) -> None:
    """A starting VM is up: how long the boot took (for the policy and for its cost)."""
    new.boot_seconds = _elapsed(rec.state_since, stamp)
    if new.billed_since is not None:
        new.interval_boot_s = _elapsed(new.billed_since, stamp)


# Billing runs from the start request until the VM is deallocated; a failed VM was asked to
# stop (its billing ends there; a recovered one opens a new interval).
_UNBILLED = (VmState.DEALLOCATED, VmState.FAILED)


def _bill(rec: VmRecord, new: VmRecord, stamp: datetime) -> list[dict[str, Any]]:
    """Open or close the billed interval on a state change; returns the interval closed."""
    if new.state not in _UNBILLED and new.billed_since is None:
        new.billed_since, new.interval_boot_s = stamp, -1.0
        return []
    if new.state in _UNBILLED and new.billed_since is not None:
        seconds = _elapsed(new.billed_since, stamp)
        boot = new.interval_boot_s if new.interval_boot_s >= 0 else seconds
        interval = {"vm": rec.name, "start": new.billed_since, "end": stamp,
                    "seconds": seconds, "bootSeconds": min(boot, seconds), "slots": rec.slots,
                    "priority": rec.priority.value}
        new.billed_seconds += seconds
        new.billed_since, new.interval_boot_s = None, -1.0
        return [interval]
    return []


def _elapsed(since: datetime, now: datetime) -> float:
    return max(0.0, (now - since).total_seconds())
