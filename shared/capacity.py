"""Capacity on demand: run the pool policy on every event (work issued, job finished, VM
idle) and on the backstop timer, through the process's one scaler (`Services.scaler`).
"""
from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from shared import telemetry
from shared.contracts import VmState
from shared.cost import CostBook
from shared.pool.workers import WorkerRegistry
from shared.services import Services

log = logging.getLogger(__name__)
WORKER_RETENTION = timedelta(days=1)  # rows of ephemeral workers silent this long are pruned


COALESCE_S = 1.0  # at most one event-driven pass per second per process


def request_capacity(services: Services, reason: str, background: bool = False
                     ) -> dict[str, Any]:
    """A scaler pass for an event of the pipeline (work issued, job finished), coalesced
    with the other requests of this process (`PassCoalescer`); returns the pass's report when
    this call ran it, else `{"coalesced": true}` (always so with `background`)."""
    coalescer = services.capacity_passes(lambda why: scaler_pass(services, why), COALESCE_S)
    out: dict[str, Any] = {}
    if coalescer.request(reason, lambda why: out.update(scaler_pass(services, why)),
                         background=background):
        return out
    return {"coalesced": True, "reason": reason}


def scaler_pass(services: Services, reason: str) -> dict[str, Any]:
    """One scaler pass. On the timer, also hand the claims of silent VMs back to the queue."""
    scaler = services.scaler
    abandoned = []
    if reason == "timer":
        services.sync_members(scaler)
        for claim in services.claims.abandon_stale():
            abandoned.append(f"{claim.job_id}/{claim.step_key}")
            try:
                scaler.registry.release_slot(claim.vm)
            except Exception:  # noqa: BLE001 - the VM may have been removed meanwhile
                log.warning("could not release a slot of %s", claim.vm)
        WorkerRegistry(scaler.registry.table).prune(WORKER_RETENTION)
        pool_status(services)  # the backstop's look at the pool feeds the gauges
    report = scaler.run_once()
    out = report.to_dict()
    out.update(reason=reason, abandoned=abandoned,
               start=list(report.actions.start) if report.actions else [],
               deallocate=list(report.actions.deallocate) if report.actions else [],
               mark_failed=list(report.actions.mark_failed) if report.actions else [])
    if out["start"] or out["deallocate"] or out["mark_failed"]:
        services.log.write("pool.scaled", f"{reason}: start {out['start']}, deallocate "
                           f"{out['deallocate']}, failed {out['mark_failed']}", data=out)
    return out


def poison_count(services: Services) -> int:
    """Messages in `<work queue>-poison`: work no agent could ever handle, for an operator."""
    poison = services.connection.queue(services.settings.queues()[1])
    try:
        return int(poison.get_queue_properties().approximate_message_count or 0)
    except ResourceNotFoundError:
        return 0


def pool_status(services: Services) -> dict[str, Any]:
    """`GET /api/pool`: every VM with its state and load, the ephemeral workers (agents outside
    the pool, e.g. Kubernetes pods) with their heartbeats, and the backlog (also recorded as
    the queue-depth and VMs-by-state gauges)."""
    scaler = services.scaler
    book = CostBook(services)
    per_vm = book.by_vm()
    vms = []
    records = book.vms
    for rec in records:
        vms.append({"name": rec.name, "state": rec.state.value, "priority": rec.priority.value,
                    "slots": rec.slots,
                    "busy": rec.busy, "lastActivity": rec.last_activity.isoformat(),
                    "lastHeartbeat": rec.last_heartbeat.isoformat()
                    if rec.last_heartbeat else None,
                    "stateSince": rec.state_since.isoformat(), "privateIp": rec.private_ip or None,
                    "publicIp": rec.public_ip or None, "reason": rec.reason or None,
                    "bootSeconds": rec.boot_seconds or None,
                    "agentVersion": rec.agent_version or None,
                    "billedSeconds": round(rec.billed_now(book.now), 3),
                    "cost": per_vm[rec.name].to_api()})
    timeout = timedelta(seconds=services.settings.heartbeat_timeout_seconds)
    workers = [w.to_api(timeout) for w in WorkerRegistry(scaler.registry.table).list()]
    queued, in_flight, poison = (scaler.queued(), len(services.claims.active()),
                                 poison_count(services))
    telemetry.pool_observed((r.state.value for r in records), (s.value for s in VmState),
                            queued, in_flight, poison)
    return {"backend": services.settings.pool_backend, "vms": vms, "workers": workers,
            "queued": queued, "inFlight": in_flight, "poison": poison,
            "maxRunning": services.settings.pool_max_running, "cost": book.total().to_api(),
            "costByPriority": {p: split.to_api() for p, split in
                               sorted(book.by_priority().items())}}
