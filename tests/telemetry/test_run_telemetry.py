"""Telemetry of a real run: the app (function_app.py in devhost, in this process so the SDK's
in-memory metric reader and log exporter see it) on Azurite with the local pool of agent
processes. Three files succeed, one fails; the metrics and log records must say so."""
from __future__ import annotations

import logging
import socket
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests
from opentelemetry import metrics
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from devhost.testing import ThreadedHost
from shared import services as services_module
from shared import telemetry
from shared.pool.backends import make_backend
from shared.pool.members import parse_pool_vms
from shared.services import Services
from shared.storage import ensure_resources
from tools.polling import poll

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from conftest import app_env  # noqa: E402 - the e2e settings, reused as they are

_READER = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[_READER]))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def log_records() -> Iterator[InMemoryLogRecordExporter]:
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    handler = LoggingHandler(level=logging.INFO, logger_provider=provider)
    logger = logging.getLogger(telemetry.EVENT_LOGGER)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield exporter
    finally:
        logger.removeHandler(handler)


@pytest.fixture()
def app(azurite, tmp_path, monkeypatch) -> Iterator[dict[str, Any]]:
    port = _free_port()
    (tmp_path / "boots").mkdir()
    env = app_env(azurite, tmp_path, LOCAL_AGENT_API_BASE_URL=f"http://127.0.0.1:{port}",
                  POOL_VMS="vm01..vm03", IDLE_COOLDOWN_SECONDS="2",
                  # Blob events are never delivered here, so only the run processes the files
                  # (a polled blob trigger would race it for the same originals).
                  BLOB_TRIGGER_SOURCE="EventGrid", E2E_BOOT_DIR=str(tmp_path / "boots"),
                  LOCAL_AGENT_COMMAND=f"{sys.executable} {HERE / 'counting_launcher.py'}")
    services = Services.from_env(env)
    ensure_resources(services.settings, services.connection)
    # The app in this process builds its services from this test's settings, and forgets them.
    monkeypatch.setattr(services_module, "_services", None)
    threaded = ThreadedHost(ROOT, env=env, port=port)
    threaded.start()
    try:
        yield {"base": f"http://127.0.0.1:{port}", "env": env, "services": services,
               "boots": tmp_path / "boots"}
    finally:
        threaded.stop()
        backend = make_backend(services.settings, env=env)
        for vm in parse_pool_vms(services.settings.pool_vms):
            try:
                backend.deallocate(vm)
            except Exception:  # noqa: BLE001, S112 - best effort cleanup of agent processes
                continue


def _points(name: str) -> list[Any]:
    data = _READER.get_metrics_data()
    out = []
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    out.extend(metric.data.data_points)
    return out


def _total(name: str, **attrs: str) -> float:
    """Sum of a counter (or count of a histogram) over points with these attributes."""
    total = 0.0
    for point in _points(name):
        if all(point.attributes.get(k) == v for k, v in attrs.items()):
            total += point.count if hasattr(point, "count") else point.value
    return total


def _wait(what: str, check, timeout: float = 180) -> Any:
    value = poll(check, timeout, every=0.5)
    assert value, f"timed out waiting for {what}"
    return value


def test_a_run_emits_each_metric_and_attributed_log_records(app, log_records) -> None:
    services: Services = app["services"]
    s = services.settings
    # Counters are cumulative for the process, and other tests in it may have finished jobs:
    # every figure below is what this run added.
    counted = [(telemetry.JOBS, {}), (telemetry.JOBS, {"outcome": "succeeded"}),
               (telemetry.JOBS, {"outcome": "failed", "actions": "process"}),
               (telemetry.JOB_DURATION, {"outcome": "succeeded"}),
               (telemetry.STEPS, {"action": "process", "outcome": "failed"}),
               (telemetry.STEPS, {"action": "process", "outcome": "succeeded"}),
               (telemetry.STEP_DURATION, {"action": "process"}), (telemetry.VM_STARTS, {})]
    first = {(name, tuple(sorted(a.items()))): _total(name, **a) for name, a in counted}

    def added(name: str, **attrs: str) -> float:
        return _total(name, **attrs) - first[(name, tuple(sorted(attrs.items())))]
    blobs = services.blobs
    for i in range(3):
        blobs.get_blob_client(s.data_container, f"in/ok{i}.json").upload_blob(b'{"n": %d}' % i)
    blobs.get_blob_client(s.data_container, "in/bad.json").upload_blob(b'{"fail": 1}')
    response = requests.post(f"{app['base']}/api/runs",
                             json={"prefix": "in/", "runId": "nightly-t"},
                             headers={"x-functions-key": app["env"]["DEVHOST_FUNCTION_KEY"]},
                             timeout=30)
    assert response.status_code == 202, response.text

    def finished() -> list | None:
        jobs = [j for j in services.jobs.list(run_id="nightly-t", limit=100)
                if j.status in ("succeeded", "failed")]
        return jobs if len(jobs) == 4 else None

    jobs = _wait("the run's four jobs", finished)
    _wait("every VM deallocated", lambda: all(
        r.state.value == "deallocated" for r in services.registry.list()), timeout=120)
    time.sleep(2.5)  # one more backstop pass (every 2 s) records the gauges of the idle pool

    all_jobs = services.jobs.list(limit=100)
    ok = sum(1 for j in all_jobs if j.status == "succeeded")
    bad = sum(1 for j in all_jobs if j.status == "failed")
    assert (ok, bad) == (3, 1) and len(all_jobs) == 4
    assert added(telemetry.JOBS, outcome="succeeded") == ok
    assert added(telemetry.JOBS) == ok + bad
    assert added(telemetry.JOBS, outcome="failed", actions="process") == bad
    assert added(telemetry.JOB_DURATION, outcome="succeeded") == ok
    # Each failed job tried MAX_ATTEMPTS=3 times; every step outcome is counted by action.
    assert added(telemetry.STEPS, action="process", outcome="failed") == bad * 3
    assert added(telemetry.STEPS, action="process", outcome="succeeded") == ok
    assert added(telemetry.STEP_DURATION, action="process") == ok + bad * 3

    starts = len(list(app["boots"].iterdir()))  # agent processes the local pool launched
    assert starts >= 1
    assert added(telemetry.VM_STARTS) == starts
    # Boots end in the agent's process (its first heartbeat moves the row to running), so
    # they are counted there: see test_boot_and_billed_time_of_one_vm.
    billed = _total(telemetry.VM_BILLED)
    assert billed > 0
    running_billed = sum(p.value for p in _points(telemetry.VM_BILLED)
                         if p.attributes["state"] == "running")
    assert 0 < running_billed <= billed

    depth = {p.attributes["queue"]: p.value for p in _points(telemetry.QUEUE_DEPTH)}
    assert depth == {"visible": 0, "in_flight": 0, "poison": 0}
    by_state = {p.attributes["state"]: p.value for p in _points(telemetry.VMS)}
    assert by_state["deallocated"] == 3 and by_state["running"] == 0

    records = [r.log_record for r in log_records.get_finished_logs()]
    def attrs_of(kind: str) -> list[dict]:
        return [dict(r.attributes) for r in records if r.attributes.get(telemetry.KIND) == kind]

    run_jobs = {j.job_id for j in jobs}
    finished_records = attrs_of("job.succeeded") + attrs_of("job.failed")
    assert {a[telemetry.JOB_ID] for a in finished_records} >= run_jobs
    for a in finished_records:
        if a[telemetry.JOB_ID] in run_jobs:
            assert a[telemetry.RUN_ID] == "nightly-t"
        if a[telemetry.KIND] == "job.succeeded":
            assert a[telemetry.VM_NAME] in ("vm01", "vm02", "vm03")
    done = attrs_of("work.done")
    assert done and all(a[telemetry.VM_NAME].startswith("vm") and a[telemetry.ATTEMPT] >= 1
                        and a[telemetry.JOB_ID] and a[telemetry.ACTION] == "process"
                        for a in done)
    assert {a[telemetry.ATTEMPT] for a in attrs_of("work.issued")} == {1, 2, 3}
    failed_levels = {r.severity_text for r in records
                     if r.attributes.get(telemetry.KIND) == "job.failed"}
    assert failed_levels == {"WARN"}
    vm_states = attrs_of("vm.state")
    assert {a["vm.state"] for a in vm_states} >= {"starting", "deallocated"}
    assert all(a[telemetry.VM_NAME] in ("vm01", "vm02", "vm03") for a in vm_states)


def test_boot_and_billed_time_of_one_vm(storage_env) -> None:
    """Each committed state change is measured once, by the process that commits it."""
    services = Services.from_env(storage_env)
    ensure_resources(services.settings, services.connection)
    registry = services.registry
    registry.ensure_members(["vmt1"], 1)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    boots, billed, starts = (_total(telemetry.VM_BOOT, vm="vmt1"),
                             _total(telemetry.VM_BILLED, vm="vmt1"),
                             _total(telemetry.VM_STARTS, vm="vmt1"))
    registry.transition("vmt1", "starting", ["deallocated"], now=t0)
    registry.heartbeat("vmt1", now=t0 + timedelta(seconds=42))       # the agent is up
    registry.heartbeat("vmt1", now=t0 + timedelta(seconds=50))       # no change of state
    registry.transition("vmt1", "draining", ["running"], now=t0 + timedelta(seconds=100))
    registry.transition("vmt1", "deallocating", ["draining"], now=t0 + timedelta(seconds=101))
    registry.transition("vmt1", "deallocated", ["deallocating"],
                        now=t0 + timedelta(seconds=110))
    assert _total(telemetry.VM_STARTS, vm="vmt1") - starts == 1
    assert _total(telemetry.VM_BOOT, vm="vmt1") - boots == 1
    boot = [p for p in _points(telemetry.VM_BOOT) if p.attributes["vm"] == "vmt1"][0]
    assert boot.max == 42.0
    assert _total(telemetry.VM_BILLED, vm="vmt1") - billed == 110.0
    assert _total(telemetry.VM_BILLED, vm="vmt1", state="running") == 58.0
