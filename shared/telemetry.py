"""OpenTelemetry for the app and the agent: the pool's metrics and structured log records.

Instruments come from the global meter provider and records go through Python logging, so the
same code reports to Application Insights in Azure (`configure()` sets up
azure-monitor-opentelemetry when a connection string is present), to an OTLP collector, or to
the SDK's in-memory reader and exporter in tests. Without a provider every call is a no-op.

Metric names (all prefixed `vmpool.`) and their attributes are defined here once; the workbook
and alert rules in `infra/monitoring.bicep` query them by these names.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from opentelemetry import metrics

METER_NAME = "vmpool"
EVENT_LOGGER = "vmpool.events"

QUEUE_DEPTH = "vmpool.queue.depth"          # gauge; queue = visible | in_flight | poison
VMS = "vmpool.vms"                          # gauge; state = one of VmState
VM_STARTS = "vmpool.vm.starts"              # counter; vm
VM_FAILURES = "vmpool.vm.failures"          # counter; vm
VM_BOOT = "vmpool.vm.boot.duration"         # histogram (s); vm
VM_BILLED = "vmpool.vm.billed"              # counter (s) of VM time billed; vm, state
JOBS = "vmpool.jobs"                        # counter; outcome, actions
JOB_DURATION = "vmpool.job.duration"        # histogram (s); outcome, actions
STEPS = "vmpool.steps"                      # counter; outcome, action
STEP_DURATION = "vmpool.step.duration"      # histogram (s); outcome, action

# Log record attributes: what a KQL query filters on (customDimensions in App Insights).
JOB_ID, RUN_ID, VM_NAME, ATTEMPT, STEP, ACTION, KIND = (
    "job.id", "run.id", "vm.name", "job.attempt", "job.step", "job.action", "event.kind")

# VM states that are billed: the machine is allocated (starting counts, deallocating too).
BILLED_STATES = ("starting", "running", "draining", "deallocating")

_lock = threading.Lock()
_instruments: dict[str, Any] = {}
_configured = False
events_log = logging.getLogger(EVENT_LOGGER)


def _instrument(name: str) -> Any:
    """Instruments are made on first use, from whatever meter provider is global by then."""
    with _lock:
        found = _instruments.get(name)
        if found is None:
            meter = metrics.get_meter(METER_NAME)
            unit = "s" if name in (VM_BOOT, VM_BILLED, JOB_DURATION, STEP_DURATION) else "1"
            if name in (QUEUE_DEPTH, VMS):
                found = meter.create_gauge(name, unit=unit)
            elif name in (VM_BOOT, JOB_DURATION, STEP_DURATION):
                found = meter.create_histogram(name, unit=unit)
            else:
                found = meter.create_counter(name, unit=unit)
            _instruments[name] = found
        return found


def configure(env: Mapping[str, str] | None = None, logger_name: str = "") -> bool:
    """Export to Azure Monitor when `APPLICATIONINSIGHTS_CONNECTION_STRING` is set (once per
    process); True if it did. The worker's own OpenTelemetry integration carries the host's
    trace context into these records."""
    global _configured
    env = os.environ if env is None else env
    if _configured or not env.get("APPLICATIONINSIGHTS_CONNECTION_STRING"):
        return False
    from azure.monitor.opentelemetry import configure_azure_monitor  # noqa: PLC0415 - heavy

    configure_azure_monitor(logger_name=logger_name)
    _configured = True
    return True


# --- the pool ------------------------------------------------------------------------------

def pool_observed(states: Iterable[str], all_states: Iterable[str], visible: int,
                  in_flight: int, poison: int) -> None:
    """Queue depth and VMs by state, as one look at the pool saw them."""
    depth = _instrument(QUEUE_DEPTH)
    depth.set(visible, {"queue": "visible"})
    depth.set(in_flight, {"queue": "in_flight"})
    depth.set(poison, {"queue": "poison"})
    counts = dict.fromkeys(all_states, 0)
    for state in states:
        counts[state] = counts.get(state, 0) + 1
    vms = _instrument(VMS)
    for state, count in counts.items():
        vms.set(count, {"state": state})


def vm_state_changed(vm: str, old: str, new: str, since: datetime, at: datetime,
                     boot_seconds: float) -> None:
    """One committed change of a VM's state (the registry's ETag makes it exactly once)."""
    if old == new:
        return
    attrs = {"vm": vm}
    if old in BILLED_STATES:
        _instrument(VM_BILLED).add(max(0.0, (at - since).total_seconds()),
                                   {**attrs, "state": old})
    if new == "starting":
        _instrument(VM_STARTS).add(1, attrs)
    if old == "starting" and new == "running":
        _instrument(VM_BOOT).record(boot_seconds, attrs)
    if new == "failed":
        _instrument(VM_FAILURES).add(1, attrs)
    level = logging.WARNING if new == "failed" else logging.INFO
    events_log.log(level, "VM %s: %s -> %s", vm, old, new,
                   extra={KIND: "vm.state", VM_NAME: vm, "vm.state": new,
                          "vm.previous_state": old})


# --- jobs ----------------------------------------------------------------------------------

def step_finished(action: str, outcome: str, duration_ms: int | float | None) -> None:
    attrs = {"action": action or "unknown", "outcome": outcome}
    _instrument(STEPS).add(1, attrs)
    if duration_ms is not None:
        _instrument(STEP_DURATION).record(float(duration_ms) / 1000.0, attrs)


def job_finished(actions: str, outcome: str, duration_ms: int) -> None:
    attrs = {"actions": actions or "unknown", "outcome": outcome}
    _instrument(JOBS).add(1, attrs)
    _instrument(JOB_DURATION).record(duration_ms / 1000.0, attrs)


def step_attributes(job_id: str, vm: str, attempt: int, step: int, action: str,
                    run_id: str = "") -> dict[str, Any]:
    """The attributes of a record about one attempt at one step (agent and app alike)."""
    attrs: dict[str, Any] = {JOB_ID: job_id, VM_NAME: vm, ATTEMPT: attempt, STEP: step,
                             ACTION: action}
    if run_id:
        attrs[RUN_ID] = run_id
    return attrs


# --- the event log as structured records -----------------------------------------------------

def event(kind: str, message: str, *, job_id: str = "", vm: str = "", run_id: str = "",
          data: Mapping[str, Any] | None = None) -> None:
    """An event-log entry as a log record whose attributes name its job, run, VM and attempt."""
    data = data or {}
    extra: dict[str, Any] = {KIND: kind}
    for key, value in ((JOB_ID, job_id), (VM_NAME, vm), (RUN_ID, run_id),
                       (ATTEMPT, data.get("attempt")), (STEP, data.get("step")),
                       (ACTION, data.get("action"))):
        if value not in (None, ""):
            extra[key] = value
    failed = kind.endswith(".failed") or data.get("status") == "failed"
    events_log.log(logging.WARNING if failed else logging.INFO, "%s", message, extra=extra)
