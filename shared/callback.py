"""The VM callbacks (`done`, `idle`), checked before anything changes.

A done callback is accepted only when: the VM is in the pool, the attempt was issued, the step
is claimed by that VM, the work item's HMAC token verifies, and (when enabled) the caller's
address is the VM's. Anything else is refused with a specific error and changes nothing. A
repeat of an accepted callback is a no-op.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from shared.api import ApiError, bad_request, field, not_found, parse_json_body, require_object
from shared.contracts import STEP_STATUSES, StepResult, done_event_name
from shared.jobs import JobNotFound
from shared.naming import BlobNameError, check_blob_name
from shared.pool.registry import UnknownVm, VmRecord
from shared.services import Services
from shared.workitem import verify

MAX_ERROR_CHARS = 8000


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
    etag: str


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


def _check_vm(services: Services, vm: str, headers: dict[str, str]) -> VmRecord:
    try:
        record = services.registry.get(vm)
    except UnknownVm:
        raise not_found(f"VM '{vm[:64]}' is not a member of the pool") from None
    if services.settings.check_caller_ip:
        caller = caller_address(headers)
        allowed = {a for a in (record.private_ip, record.public_ip) if a}
        if caller is None or caller not in allowed:
            raise ApiError(403, "AddressMismatch",
                           f"caller address does not belong to VM '{vm}'")
    return record


def check_done(services: Services, vm: str, job_id: str, body: bytes,
               headers: dict[str, str]) -> DoneEvent:
    s = services.settings
    data = require_object(parse_json_body(body, s.max_body_bytes))
    step = field(data, "step", int)
    attempt = field(data, "attempt", int)
    token = field(data, "token", str)
    status = field(data, "status", str)
    if status not in STEP_STATUSES:
        raise bad_request("field 'status' must be 'succeeded' or 'failed'")
    output = field(data, "output", str, required=False, default="")
    exit_code = field(data, "exitCode", int, required=False)
    error = field(data, "error", str, required=False, default="")
    numbers = {k: field(data, k, int, required=False, default=0)
               for k in ("bytesIn", "bytesOut", "durationMs")}
    if any(v < 0 for v in numbers.values()):
        raise bad_request("byte counts and durations must not be negative")
    if output:
        container, _, name = output.partition("/")
        try:
            check_blob_name(name)
        except BlobNameError as exc:
            raise bad_request(f"field 'output': {exc}") from None
        if container != s.results_container:
            raise bad_request(f"field 'output' must be in the '{s.results_container}' container")
    _check_vm(services, vm, headers)
    try:
        services.jobs.get(job_id)
    except JobNotFound:
        raise not_found(f"job '{job_id[:100]}' does not exist") from None
    issued = services.issued.get(job_id, step, attempt)
    if issued is None:
        raise not_found(f"job '{job_id[:100]}' has no step {step} attempt {attempt}")
    item, acknowledged, etag = issued
    if not verify(item, token, s.callback_signing_key):
        raise ApiError(403, "InvalidToken", "the work item token does not verify")
    claim = services.claims.get(job_id, item.step_key)
    if claim is None or claim.vm != vm:
        raise ApiError(403, "NotClaimed",
                       f"step {step} attempt {attempt} is not claimed by VM '{vm}'")
    payload: StepResult = {"status": status, "vm": vm, "exitCode": exit_code,
               "error": error[-MAX_ERROR_CHARS:], "output": output, **numbers}
    return DoneEvent(item.instance_id, done_event_name(step, attempt), payload, acknowledged,
                     job_id, step, attempt, etag)


def acknowledge(services: Services, event: DoneEvent, vm: str) -> None:
    """Record the first accepted callback, after its event was raised."""
    services.issued.acknowledge(event.job_id, event.step, event.attempt, event.etag, vm)
    services.log.write("work.done", f"VM {vm} reported {event.payload['status']} for step "
                       f"{event.step} attempt {event.attempt}", job_id=event.job_id, vm=vm,
                       data={k: v for k, v in event.payload.items() if k != "error"})


def check_idle(services: Services, vm: str, body: bytes, headers: dict[str, str]) -> int:
    """Validate an idle report; returns the idle seconds it claims."""
    data = require_object(parse_json_body(body or b"{}", services.settings.max_body_bytes))
    idle = field(data, "idleSeconds", (int, float), required=False, default=0)
    if idle < 0:
        raise bad_request("field 'idleSeconds' must not be negative")
    _check_vm(services, vm, headers)
    return int(idle)
