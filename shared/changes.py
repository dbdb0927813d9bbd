"""Pool changes (`POST /api/changes`): validated requests turned into ordered steps.

A change is an orchestration. Each step is one backend or registry action on one VM; steps of
one VM depend on the previous one (provision before register, drain before deallocate); a slow
backend operation is begun by one activity call and polled by the next after a durable timer,
so nothing blocks a worker while Azure works. Progress is the orchestration's custom status and
a row in `tblchange`.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from azure.data.tables import UpdateMode

from shared.api import ApiError, bad_request, conflict, field, not_found
from shared.clock import utcnow
from shared.contracts import (
    CHANGE_PLANS,
    CHANGE_TYPES,
    DONE,
    PENDING,
    POWER_REQUESTED,
    ChangeInput,
    ChangeStep,
    ChangeStepRequest,
    ChangeStepResult,
    is_valid_vm_name,
    step_done,
    step_pending,
)
from shared.paging import SortKey, equals_filter, page
from shared.pool.backends.base import (
    DEALLOCATED,
    RUNNING,
    STARTING,
    STOPPED,
    BackendError,
    Operation,
    Throttled,
)
from shared.pool.registry import InvalidTransition, RegistryError, UnknownVm, VmState
from shared.pool.scaler import Scaler
from shared.services import Services
from shared.webhooks import callback_url, webhook_input

MAX_VMS_PER_CHANGE = 100
THROTTLED_RETRY_S = 30.0  # when a throttled backend names no time to wait
_SPEC_KEYS = {"size", "image", "subnetId", "publicIp", "adminUsername", "sshPublicKey", "slots",
              "priority", "maxPrice"}
PRIORITIES = ("regular", "spot")
PLANS = CHANGE_PLANS
MAX_SPEC_TEXT = 4096  # an SSH public key is the longest of these
MAX_SLOTS = 64


class StepFailed(RuntimeError):
    """A change step failed for a reason that retrying will not fix."""


@dataclass(frozen=True)
class ChangeRequest:
    change_id: str
    change_type: str
    vms: tuple[str, ...]
    spec: dict[str, Any]
    webhook: dict[str, Any] | None = None

    def steps(self) -> list[ChangeStep]:
        return [{"vm": vm, "step": step, "status": PENDING}
                for vm in self.vms for step in PLANS[self.change_type]]

    def to_input(self) -> ChangeInput:
        out: ChangeInput = {"changeId": self.change_id, "changeType": self.change_type,
                            "vms": list(self.vms), "spec": self.spec, "steps": self.steps()}
        if self.webhook:
            out["webhook"] = self.webhook  # type: ignore[typeddict-unknown-key]
        return out


def parse_change(services: Services, data: dict[str, Any],
                 change_id: str | None = None) -> ChangeRequest:
    """Validate against the pool as it is now; refuse before anything changes."""
    change_type = field(data, "changeType", str)
    if change_type not in CHANGE_TYPES:
        raise bad_request(f"field 'changeType' must be one of {', '.join(CHANGE_TYPES)}")
    vms = field(data, "vms", list)
    if not vms or len(vms) > MAX_VMS_PER_CHANGE:
        raise bad_request(f"field 'vms' must list 1-{MAX_VMS_PER_CHANGE} VM names")
    if not all(isinstance(v, str) and is_valid_vm_name(v) for v in vms):
        raise bad_request("field 'vms' holds an invalid VM name")
    if len(set(vms)) != len(vms):
        raise bad_request("field 'vms' lists a VM twice")
    spec = field(data, "spec", dict, required=False, default={})
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        raise bad_request(f"field 'spec' has unknown keys: {', '.join(sorted(unknown))}")
    for key in _SPEC_KEYS & set(spec):
        if key == "publicIp":
            field(spec, key, bool, required=False)
        elif key == "slots":
            slots = field(spec, key, int, required=False)
            if slots is not None and not 1 <= slots <= MAX_SLOTS:
                raise bad_request(f"field 'spec.slots' must be from 1 to {MAX_SLOTS}")
        elif key == "priority":
            if spec[key] not in PRIORITIES:
                raise bad_request("field 'spec.priority' must be regular or spot")
        elif key == "maxPrice":
            price = field(spec, key, (int, float), required=False)
            if price is not None and not (price == -1 or 0 < price <= 10000):
                raise bad_request("field 'spec.maxPrice' must be -1 (up to the on-demand "
                                  "price) or a price per hour from 0 to 10000")
        elif len(field(spec, key, str, required=False) or "") > MAX_SPEC_TEXT:
            raise bad_request(f"field 'spec.{key}' must be at most {MAX_SPEC_TEXT} characters")
    members = {r.name: r for r in services.registry.list()}
    for vm in vms:
        if change_type == "pool.add":
            if vm in members:
                raise conflict(f"VM '{vm}' is already a member of the pool")
        elif vm not in members:
            raise not_found(f"VM '{vm}' is not a member of the pool")
    if change_type == "pool.add" and services.settings.pool_backend == "external":
        raise ApiError(409, "NotSupported", "the external backend provisions nothing")
    policy = services.webhook_policy
    return ChangeRequest(change_id or f"change-{uuid.uuid4().hex[:16]}", change_type,
                         tuple(vms), spec, webhook_input(policy, callback_url(policy, data)))


_CHANGE_ID = re.compile(r"^change-[0-9a-f]{16}$")


def valid_change_id(change_id: str) -> bool:
    return bool(_CHANGE_ID.match(change_id))


def change_step(services: Services, request: ChangeStepRequest) -> ChangeStepResult:
    """The change-step activity (`contracts.CHANGE_STEP`): one step of a change, once; backend
    and registry errors become the step's error (a throttled backend: poll again later), never
    a crashed activity."""
    operation = request.get("operation")
    try:
        return run_step(services.scaler, request["step"], request["spec"], operation,
                        default_slots=services.settings.vm_slots)
    except Throttled as exc:
        return step_pending(operation, exc.retry_after or THROTTLED_RETRY_S)
    except (BackendError, RegistryError) as exc:
        return step_done(str(exc))


# Steps that stop a VM hold it against the scaler's policy (see VmRecord.held_until) for
# HOLD_S from each time they run; the change polls far more often than that.
HELD_STEPS = ("drain", "wait_idle", "deallocate", "delete")
HOLD_S = 600.0


def run_step(scaler: Scaler, step: ChangeStep, spec: dict[str, Any], operation: str | None,
             default_slots: int) -> ChangeStepResult:
    """Do (or poll) one step once.

    Start and stop go through the scaler, so the pool row and the machine move together;
    provisioning and deletion are backend operations polled by handle.
    """
    vm, kind = step["vm"], step["step"]
    registry, backend = scaler.registry, scaler.backend
    if kind in HELD_STEPS:
        registry.hold(vm, utcnow() + timedelta(seconds=HOLD_S))
    elif kind == "start":
        registry.hold(vm, None)  # an operator's start: the policy may stop it again later
    if kind in ("provision", "delete"):
        if operation is None:
            op = (backend.provision({**spec, "name": vm}) if kind == "provision"
                  else backend.delete(vm))
            return step_pending(op.to_json())
        status = backend.poll(Operation.from_json(operation))
        if not status.done:
            return step_pending(status.operation.to_json())
        return step_done("" if status.succeeded else (status.error or status.status))
    if kind == "register":
        slots = int(spec.get("slots") or default_slots)
        registry.ensure_members([vm], slots, spot=[vm] if spec.get("priority") == "spot" else ())
        _take_running(scaler, vm)
        return step_done()
    if kind == "start":
        if operation is None:
            scaler.start(vm)
        return _wait_power(scaler, vm, RUNNING)
    if kind == "drain":
        if registry.get(vm).state not in (VmState.DEALLOCATED, VmState.FAILED):
            scaler.drain(vm)
        return step_done()
    if kind == "wait_idle":
        record = registry.get(vm)
        # A failed VM's slots are void: its claims go stale and are retried elsewhere.
        idle = record.busy == 0 or record.state == VmState.FAILED
        return step_done() if idle else step_pending(None)
    if kind == "deallocate":
        if operation is None and registry.get(vm).state != VmState.DEALLOCATED:
            scaler.stop(vm)
        return _wait_power(scaler, vm, DEALLOCATED)
    if kind == "unregister":
        try:
            registry.remove_member(vm)
        except UnknownVm:
            pass
        return step_done()
    raise StepFailed(f"unknown step {kind!r}")


def _take_running(scaler: Scaler, vm: str) -> None:
    """A VM Azure created is already running (and billed): a member registered as deallocated
    would refuse its agent's claims until a reconcile pass noticed. Take it in as it is."""
    if not scaler.backend.manages_power:
        return
    try:
        power = scaler.backend.power_state(vm)
    except BackendError:
        return  # a reconcile pass takes it in once the backend answers
    if power not in (RUNNING, STARTING):
        return
    target = VmState.RUNNING if power == RUNNING else VmState.STARTING
    try:
        scaler.registry.transition(vm, target, [VmState.DEALLOCATED],
                                   reason="running since it was provisioned")
    except InvalidTransition:
        pass  # already moved (a repeated step, or a pass that saw it first)


def _wait_power(scaler: Scaler, vm: str, wanted: str) -> ChangeStepResult:
    """Done once the machine reports `wanted`; a failed row ends the step with its reason."""
    record = scaler.registry.get(vm)
    if record.state == VmState.FAILED:
        return step_done(record.reason or "VM failed")
    power = scaler.backend.power_state(vm)
    if power == wanted or (wanted == DEALLOCATED and power == STOPPED):
        if wanted == DEALLOCATED and record.state == VmState.DEALLOCATING:
            scaler.registry.transition(vm, VmState.DEALLOCATED, [VmState.DEALLOCATING],
                                       now=scaler.stopped_when(record, utcnow()))
        return step_done()
    return step_pending(POWER_REQUESTED)


def record_change(services: Services, change: ChangeInput) -> None:
    """Merge the change's row so it can be listed after its orchestration is purged."""
    steps = change.get("steps", [])
    now = utcnow()
    entity = {
        "PartitionKey": change["changeId"], "RowKey": "change",
        "changeType": change["changeType"], "status": change.get("status", "running"),
        "progress": f"{sum(1 for s in steps if s['status'] == DONE)}/{len(steps)}",
        "vms": ",".join(change["vms"]), "error": change.get("error", "")[:8000],
        "updatedAt": now}
    if change.get("status") == "pending":
        entity["createdAt"] = now
    services.table(services.settings.change_table).upsert_entity(entity, mode=UpdateMode.MERGE)


def _change_api(row: Any) -> dict[str, Any]:
    def iso(value: Any) -> str | None:
        return value.isoformat() if isinstance(value, datetime) else None

    return {"changeId": row["PartitionKey"], "changeType": row.get("changeType"),
            "status": row.get("status"), "progress": row.get("progress"),
            "vms": [v for v in str(row.get("vms") or "").split(",") if v],
            "error": row.get("error") or None, "createdAt": iso(row.get("createdAt")),
            "updatedAt": iso(row.get("updatedAt"))}


def list_changes(services: Services, status: str | None, change_type: str | None, limit: int,
                 after: SortKey | None) -> tuple[list[dict[str, Any]], str | None]:
    """Pool changes newest first, optionally of one status and one type."""
    clauses, params = equals_filter("change", status=status, changeType=change_type)
    rows = services.table(services.settings.change_table).query_entities(
        " and ".join(clauses), parameters=params)
    return page((_change_api(r) for r in rows),
                lambda c: (c["createdAt"] or c["updatedAt"] or "", c["changeId"]), limit, after)
