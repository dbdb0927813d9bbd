"""The VM callbacks (`done`, `idle`, `evicted`), checked before anything changes.

A done callback is proven by what the caller holds, not by where it runs: the attempt was issued,
the work item's HMAC token verifies, and the step is claimed by the calling worker. Workers need
not be pool members (Kubernetes pods, `POOL_BACKEND=external`); membership matters only to the
scaler, so the idle report, which asks the scaler to stop a machine, is for members alone. With
`CHECK_CALLER_IP` the caller's address must also be the member's, so a non-member is refused
there (the app knows no address of it). Anything else is refused with a specific error and
changes nothing. A repeat of an accepted callback is a no-op.
"""
from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Any

from shared import telemetry
from shared.api import (
    ApiError,
    BodyField,
    bad_request,
    field,
    not_found,
    parse_json_body,
    read_body,
    require_object,
)
from shared.claims import WITHDRAWN
from shared.contracts import STEP_STATUSES, StepResult, done_event_name, is_valid_vm_name
from shared.jobs import JobNotFound
from shared.naming import BlobNameError, check_blob_name
from shared.pool.registry import UnknownVm, VmPriority, VmRecord
from shared.services import Services
from shared.workitem import WorkItem, WorkItemError, verify

log = logging.getLogger(__name__)
MAX_ERROR_CHARS = 8000
MAX_IDLE_SECONDS = 10**9  # about 31 years: anything larger is not a real idle time
COUNTS = ("bytesIn", "bytesOut", "durationMs")

# The bodies the agent posts; the handlers read exactly these, and openapi.json is built from
# them. `action` is what the agent ran: informational, the issued work item is what counts.
DONE_BODY = (
    BodyField("step", int, required=True), BodyField("attempt", int, required=True),
    BodyField("token", str, required=True), BodyField("action", str),
    # The rest of the work item (agents from this version on): the token proves them, which
    # spares reading the issued item.
    BodyField("instanceId", str, default=""), BodyField("blob", str, default=""),
    BodyField("status", str, required=True, choices=STEP_STATUSES),
    BodyField("exitCode", int, nullable=True), BodyField("error", str, default="", nullable=True),
    BodyField("output", str, default="", nullable=True),
    *(BodyField(name, int, default=0, minimum=0) for name in COUNTS),
)
# NaN fails the range check too (it compares false).
IDLE_BODY = (BodyField("idleSeconds", (int, float), default=0, minimum=0,
                       maximum=MAX_IDLE_SECONDS, exclusive_maximum=True),)


@dataclass(frozen=True)
class DoneEvent:
    """What to raise on the orchestration (unless `repeat`)."""

    instance_id: str
    event_name: str
    payload: StepResult
    repeat: bool
    job_id: str
    step: int
    attempt: int
    action: str = ""


def caller_address(headers: dict[str, str]) -> str | None:
    """The caller's IP from the host's headers; `client-ip` may carry a port, IPv6 brackets."""
    lowered = {k.lower(): v for k, v in headers.items()}
    raw = lowered.get("client-ip") or (lowered.get("x-forwarded-for") or "").split(",")[0]
    raw = raw.strip()
    if not raw:
        return None
    if raw.startswith("["):  # [::1]:1234
        raw = raw[1:].split("]", 1)[0]
    elif raw.count(":") == 1:  # 10.0.0.4:51234
        raw = raw.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        return None


def _check_caller(services: Services, vm: str, record: VmRecord | None,
                  headers: dict[str, str]) -> None:
    if not services.settings.check_caller_ip:
        return
    caller = caller_address(headers)
    allowed = {a for a in (record.private_ip, record.public_ip) if a} if record else set()
    if caller is None or caller not in allowed:
        raise ApiError(403, "AddressMismatch", f"caller address does not belong to VM '{vm}'")


def _check_worker(services: Services, vm: str, headers: dict[str, str]) -> None:
    """Any worker may report; only the caller-address rule depends on the pool row."""
    if not is_valid_vm_name(vm):
        raise bad_request(f"'{vm[:64]}' is not a valid worker name")
    if not services.settings.check_caller_ip:
        return  # the pool row is read only for the address rule
    try:
        record: VmRecord | None = services.registry.get(vm)
    except UnknownVm:
        record = None
    _check_caller(services, vm, record, headers)


def _check_member(services: Services, vm: str, headers: dict[str, str]) -> VmRecord:
    if not is_valid_vm_name(vm):
        raise not_found(f"VM '{vm[:64]}' is not a member of the pool")
    try:
        record = services.registry.get(vm)
    except UnknownVm:
        raise not_found(f"VM '{vm[:64]}' is not a member of the pool") from None
    _check_caller(services, vm, record, headers)
    return record


def check_done(services: Services, vm: str, job_id: str, body: bytes,
               headers: dict[str, str]) -> DoneEvent:
    s = services.settings
    values = read_body(require_object(parse_json_body(body, s.max_body_bytes)), DONE_BODY)
    step, attempt, token, status = (values[k] for k in ("step", "attempt", "token", "status"))
    output, exit_code, error = values["output"], values["exitCode"], values["error"]
    numbers = {k: values[k] for k in COUNTS}
    if output:
        container, _, name = output.partition("/")
        try:
            check_blob_name(name)
        except BlobNameError as exc:
            raise bad_request(f"field 'output': {exc}") from None
        if container != s.results_container:
            raise bad_request(f"field 'output' must be in the '{s.results_container}' container")
    _check_worker(services, vm, headers)
    item, acknowledged = _reported_item(values, job_id), False
    if item is None or not verify(item, token, s.callback_signing_key):
        issued = services.issued.get(job_id, step, attempt)
        if issued is None:  # the job row is read only to say which of the two is missing
            try:
                services.jobs.get(job_id)
            except JobNotFound:
                raise not_found(f"job '{job_id[:100]}' does not exist") from None
            raise not_found(f"job '{job_id[:100]}' has no step {step} attempt {attempt}")
        item, acknowledged, _etag = issued
        if not verify(item, token, s.callback_signing_key):
            raise ApiError(403, "InvalidToken", "the work item token does not verify")
    claim = services.claims.get(job_id, item.step_key)
    if claim is not None and claim.state == WITHDRAWN:
        raise ApiError(409, "JobCancelled", f"job '{job_id[:100]}' was cancelled; the work "
                       "item is withdrawn")
    if claim is None or claim.vm != vm:
        raise ApiError(403, "NotClaimed",
                       f"step {step} attempt {attempt} is not claimed by VM '{vm}'")
    payload: StepResult = {"status": status, "vm": vm, "exitCode": exit_code,
                           "error": error[-MAX_ERROR_CHARS:], "output": output, **numbers}
    return DoneEvent(item.instance_id, done_event_name(step, attempt), payload, acknowledged,
                     job_id, step, attempt, item.action)


def _reported_item(values: dict[str, Any], job_id: str) -> WorkItem | None:
    """The work item as the report restates it, or None when it does not (older agents):
    only issue_work_item can have signed these fields, so a token that verifies proves
    the attempt was issued without reading its row."""
    if not (values["instanceId"] and values["blob"] and values["action"]):
        return None
    try:
        item = WorkItem.from_dict({"jobId": job_id, "instanceId": values["instanceId"],
                                   "step": values["step"], "action": values["action"],
                                   "blob": values["blob"], "attempt": values["attempt"]})
        item.signing_payload()  # a lone surrogate in a field cannot be signed
    except (WorkItemError, UnicodeEncodeError):
        return None  # not a work item we could have issued: the read decides
    return item


def acknowledge(services: Services, event: DoneEvent, vm: str) -> str | None:
    """Take the right to raise this attempt's event, BEFORE raising it: an ETag-guarded write,
    so of concurrent or retried callbacks exactly one raises, and a retry after a failure past
    this point is a repeat. The row's new ETag, or None when another request took it first."""
    return services.issued.acknowledge(event.job_id, event.step, event.attempt, vm)


def withdraw(services: Services, event: DoneEvent, etag: str) -> None:
    """The event could not be raised: give the right back so the agent's retry raises it.
    Should this write fail too, the attempt's timeout re-issues the step (nothing is lost)."""
    try:
        services.issued.withdraw(event.job_id, event.step, event.attempt, etag)
    except Exception:  # noqa: BLE001 - best effort; the orchestration's timer is the backstop
        log.warning("could not withdraw the acknowledgement of %s step %s attempt %s",
                    event.job_id, event.step, event.attempt, exc_info=True)


def record_done(services: Services, event: DoneEvent, vm: str) -> None:
    """The event log line of an accepted callback (after the event was raised): best effort,
    since failing the callback now would only make the agent repeat what already happened."""
    try:
        telemetry.step_finished(event.action, event.payload["status"],
                                event.payload.get("durationMs"))
        services.log.write("work.done", f"VM {vm} reported {event.payload['status']} for step "
                           f"{event.step} attempt {event.attempt}", job_id=event.job_id, vm=vm,
                           data={**{k: v for k, v in event.payload.items() if k != "error"},
                                 "step": event.step, "attempt": event.attempt,
                                 "action": event.action})
    except Exception:  # noqa: BLE001 - the job row and the orchestration hold the result
        log.warning("could not log the done callback of %s", event.job_id, exc_info=True)


def check_evicted(services: Services, vm: str, body: bytes, headers: dict[str, str]) -> str:
    """Validate an eviction notice from a pool VM's agent; returns the event id it names.

    Only a spot member can be evicted; the VM must be in the pool (and, with
    CHECK_CALLER_IP, call from its own address), as for every VM callback."""
    data = require_object(parse_json_body(body or b"{}", services.settings.max_body_bytes))
    event_id = field(data, "eventId", str, required=False, default="")
    if len(event_id) > 100:
        raise bad_request("field 'eventId' must be at most 100 characters")
    record = _check_member(services, vm, headers)
    if record.priority != VmPriority.SPOT:
        raise ApiError(409, "NotSpot", f"VM '{vm}' is an on-demand member; only spot VMs are "
                                       "evicted")
    return event_id


def record_eviction(services: Services, vm: str, event_id: str) -> None:
    """The VM is being evicted: its work was handed back; it holds no slot from now on."""
    services.scaler.evicted(vm, f"spot eviction notice {event_id}".strip())
    services.log.write("vm.evicted", f"VM {vm} is being evicted (Preempt {event_id}); its work "
                       "went back to the queue", vm=vm, data={"eventId": event_id})


def check_idle(services: Services, vm: str, body: bytes, headers: dict[str, str]) -> int:
    """Validate an idle report; returns the idle seconds it claims."""
    data = require_object(parse_json_body(body or b"{}", services.settings.max_body_bytes))
    idle = read_body(data, IDLE_BODY)["idleSeconds"]
    _check_member(services, vm, headers)
    return int(idle)
