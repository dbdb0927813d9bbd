"""The scaler on Azurite with the azure backend against the fake ARM (and local/external)."""
from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from shared.claims import ClaimStore
from shared.pool.backends import VmNotFound, local_agent_env
from shared.pool.backends.external import ExternalBackend
from shared.pool.backends.local import LocalBackend
from shared.pool.policy import Actions, PolicyConfig
from shared.pool.registry import PoolRegistry, UnknownVm, VmState
from shared.pool.scaler import Scaler, ScaleReport, run_scaler, sync_members
from shared.services import Services
from shared.settings import SettingError, Settings
from shared.storage import StorageConnection, ensure_resources
from shared.workitem import WorkItem
from tools.polling import poll

FakeArm = Any  # the fake ARM of conftest.py
NOTHING = Actions(start=(), deallocate=(), mark_failed=())
STANDIN = Path(__file__).with_name("standin_agent.py")
ROOT = Path(__file__).resolve().parents[2]


def _scaler(settings: Settings, connection: StorageConnection, registry: PoolRegistry,
            backend: Any, **config: Any) -> Scaler:
    claims = ClaimStore(connection.table_service().get_table_client(settings.claim_table))
    cfg = {"max_running": 3, "idle_cooldown_s": 60.0, "boot_timeout_s": 300.0, **config}
    return Scaler(registry, backend, connection.queue(settings.work_queue), claims,
                  PolicyConfig(**cfg))


@pytest.fixture()
def pool(settings: Settings, connection: StorageConnection, registry: PoolRegistry,
         fake_arm: FakeArm) -> Scaler:
    backend = fake_arm.backend(retry_total=0)
    for vm in ("vm01", "vm02", "vm03"):
        fake_arm.add_vm(vm)
    sync_members(registry, "vm01..vm03", 1, backend)
    return _scaler(settings, connection, registry, backend)


def _enqueue(scaler: Scaler, count: int) -> None:
    for i in range(count):
        scaler.queue.send_message(f"work-{i}")


def _set(registry: PoolRegistry, vm: str, state: VmState, **fields: Any) -> None:
    rec = registry.get(vm)
    registry.transition(vm, state, [rec.state], **fields)


def test_snapshot_counts_queue_claims_and_vms(pool: Scaler) -> None:
    _enqueue(pool, 2)
    item = WorkItem("job1", "inst1", 0, "process", "data/a.csv", 1)
    pool.claims.claim(item, "vm01")
    _set(pool.registry, "vm01", VmState.RUNNING)
    assert pool.registry.claim_slot("vm01")
    snap = pool.snapshot()
    assert (snap.queued, snap.in_flight) == (2, 1)
    views = {v.name: v for v in snap.vms}
    assert (views["vm01"].state, views["vm01"].busy, views["vm01"].idle_since) == (
        "running", 1, None)
    assert views["vm02"].state == "deallocated" and views["vm02"].idle_since is not None
    assert pool.registry.get("vm01").backend_id.endswith("/virtualMachines/vm01")


def test_waiting_files_are_counted_only_when_nothing_is_queued(pool: Scaler) -> None:
    asked: list[int] = []
    pool.waiting_files = lambda limit: asked.append(limit) or 5
    item = WorkItem("job1", "inst1", 0, "process", "data/a.csv", 1)
    pool.claims.claim(item, "vm01")
    assert pool.snapshot().pending == 4  # five originals there, one of them in flight
    assert asked == [1 + 1 + Scaler.WAITING_MARGIN]
    _enqueue(pool, 1)
    assert pool.snapshot().pending == 0  # queued work already keeps VMs up: no listing
    assert len(asked) == 1


def test_waiting_files_counts_recent_blobs_up_to_its_limit(storage_env: dict[str, str]) -> None:
    services = Services.from_env(storage_env)
    ensure_resources(services.settings, services.connection)
    data = services.blobs.get_container_client(services.settings.data_container)
    for i in range(5):
        data.upload_blob(f"waiting-{i}.json", b"{}", overwrite=True)
    assert services.count_waiting_files(3) == 3
    assert services.count_waiting_files(50) == 5
    assert services.count_waiting_files(0) == 1  # at least one is looked at


def test_backlog_starts_vms_without_waiting(pool: Scaler, fake_arm: FakeArm) -> None:
    _enqueue(pool, 2)
    report = pool.run_once()
    assert report.started == ["vm01", "vm02"] and report.errors == {}
    for vm in ("vm01", "vm02"):
        rec = pool.registry.get(vm)
        assert rec.state == VmState.STARTING and '"kind":"start"' in rec.operation
        assert len(fake_arm.seen("POST", f"/virtualMachines/{vm}/start")) == 1
    assert pool.registry.get("vm03").state == VmState.DEALLOCATED
    assert not fake_arm.seen("POST", "/vm03/")
    # the next passes follow the operations; the agent's heartbeat makes the VM running
    pool.run_once()
    pool.run_once()
    assert pool.registry.get("vm01").operation == ""
    pool.registry.heartbeat("vm01")
    report = pool.run_once()
    rec = pool.registry.get("vm01")
    assert rec.state == VmState.RUNNING
    assert (rec.private_ip, rec.public_ip) == ("10.0.0.4", "20.50.60.70")  # from the NIC
    assert len(fake_arm.seen("POST", "/start")) == 2  # nothing started twice


def test_a_vm_holding_work_is_drained_not_deallocated(pool: Scaler, fake_arm: FakeArm) -> None:
    _set(pool.registry, "vm01", VmState.RUNNING)
    fake_arm.vms["vm01"]["power"] = "running"
    snap = pool.snapshot()  # the policy saw vm01 idle ...
    assert {v.name: v.busy for v in snap.vms}["vm01"] == 0
    assert pool.registry.claim_slot("vm01")  # ... then an agent took work
    report = pool.apply(Actions(start=(), deallocate=("vm01",), mark_failed=()))
    rec = pool.registry.get("vm01")
    assert (rec.state, rec.busy) == (VmState.DRAINING, 1)
    assert report.drained == ["vm01"] and report.deallocating == []
    assert not fake_arm.seen("POST", "/deallocate")
    assert pool.registry.claim_slot("vm01") is False  # draining takes no new work
    # once the work is done, the next pass deallocates it
    pool.registry.release_slot("vm01")
    report = pool.run_once()
    assert report.deallocating == ["vm01"]
    assert pool.registry.get("vm01").state == VmState.DEALLOCATING
    assert len(fake_arm.seen("POST", "/vm01/deallocate")) == 1
    pool.run_once()
    pool.run_once()
    rec = pool.registry.get("vm01")
    assert (rec.state, rec.operation) == (VmState.DEALLOCATED, "")


def test_throttled_start_leaves_the_row_deallocated(pool: Scaler, fake_arm: FakeArm) -> None:
    fake_arm.throttle("/start", times=10, retry_after="3")
    _enqueue(pool, 1)
    report = pool.run_once()
    assert "vm01" in report.errors and "429" in report.errors["vm01"]
    rec = pool.registry.get("vm01")
    assert rec.state == VmState.DEALLOCATED and rec.operation == ""
    assert "throttled" in rec.reason and "retry after 3s" in rec.reason
    assert fake_arm.vms["vm01"]["power"] == "deallocated"


def test_a_vm_already_starting_stays_starting(pool: Scaler, fake_arm: FakeArm) -> None:
    fake_arm.vms["vm01"]["power"] = "starting"  # someone else is starting it
    rec = pool.start("vm01")
    assert rec.state == VmState.STARTING
    assert "another operation is in progress" in rec.reason
    assert pool.registry.get("vm01").state == VmState.STARTING
    # a VM being deallocated elsewhere goes back to deallocated instead
    fake_arm.vms["vm02"]["power"] = "deallocating"
    rec = pool.start("vm02")
    assert rec.state == VmState.DEALLOCATED and "in progress" in rec.reason


def test_unknown_vms(pool: Scaler, fake_arm: FakeArm) -> None:
    with pytest.raises(UnknownVm, match="'ghost' is not a member"):
        pool.start("ghost")
    del fake_arm.vms["vm03"]  # in the pool table, gone from Azure
    rec = pool.start("vm03")
    assert rec.state == VmState.FAILED and "not found" in rec.reason
    assert [r.name for r in pool.registry.list()] == ["vm01", "vm02", "vm03"]


def test_a_failed_start_operation_marks_the_vm_failed(pool: Scaler, fake_arm: FakeArm) -> None:
    # (A start refused for lack of capacity is not the VM's fault: see test_spot_scaler.py.)
    fake_arm.fail_next["start"] = {"code": "VMStartTimedOut", "message": "the VM did not start"}
    pool.start("vm01")
    pool.reconcile()
    report = pool.reconcile()
    rec = pool.registry.get("vm01")
    assert rec.state == VmState.FAILED and "VMStartTimedOut" in rec.reason
    assert report.failed == ["vm01"]


def test_boot_timeout_marks_failed(pool: Scaler, fake_arm: FakeArm) -> None:
    fake_arm.op_polls = 1000  # the start never completes
    t0 = datetime.now(timezone.utc)
    pool.start("vm01", now=t0)
    report = pool.run_once(now=t0 + timedelta(seconds=301))
    assert "vm01" in report.failed
    rec = pool.registry.get("vm01")
    assert rec.state == VmState.FAILED and "no sign of life within 300s" in rec.reason


def test_a_start_that_left_the_vm_stopped_fails_after_a_grace(pool: Scaler) -> None:
    t0 = datetime.now(timezone.utc)
    # the row says starting (a scaler is between its transition and the backend call)
    _set(pool.registry, "vm01", VmState.STARTING, now=t0)
    assert pool.reconcile(now=t0 + timedelta(seconds=5)).reconciled == {}
    assert pool.registry.get("vm01").state == VmState.STARTING
    report = pool.reconcile(now=t0 + timedelta(seconds=120))
    assert report.reconciled == {"vm01": "failed"}
    assert "deallocated although it was started" in pool.registry.get("vm01").reason


def test_a_vm_that_died_with_work_is_deallocated_and_can_start_again(
        pool: Scaler, fake_arm: FakeArm) -> None:
    _set(pool.registry, "vm01", VmState.RUNNING)
    _set(pool.registry, "vm02", VmState.RUNNING)
    assert pool.registry.claim_slot("vm01")
    # both stopped outside the pool (fake power is deallocated): the backend is the truth
    report = pool.reconcile()
    assert report.reconciled == {"vm01": "deallocated", "vm02": "deallocated"}
    rec = pool.registry.get("vm01")
    assert (rec.busy, rec.state) == (0, VmState.DEALLOCATED) and "holding 1 slot" in rec.reason
    assert pool.registry.get("vm02").reason == "deallocated outside the pool"
    assert pool.start("vm01").state == VmState.STARTING  # back in service on the next start


def test_a_failed_vm_is_retried_after_the_back_off(pool: Scaler, fake_arm: FakeArm) -> None:
    t0 = datetime.now(timezone.utc) - timedelta(seconds=3600)
    pool.registry.transition("vm01", VmState.FAILED, [VmState.DEALLOCATED], now=t0,
                             reason="start failed: boom")
    early = pool.reconcile(now=t0 + timedelta(seconds=pool.failed_retry_s - 1))
    assert early.reconciled == {} and pool.registry.get("vm01").state == VmState.FAILED
    report = pool.reconcile(now=t0 + timedelta(seconds=pool.failed_retry_s + 1))
    assert report.reconciled == {"vm01": "deallocated"}
    assert "retry after failure: start failed: boom" in pool.registry.get("vm01").reason
    # one still running but silent is deallocated first
    fake_arm.vms["vm02"]["power"] = "running"
    pool.registry.transition("vm02", VmState.FAILED, [VmState.DEALLOCATED], now=t0,
                             reason="no sign of life")
    report = pool.reconcile(now=t0 + timedelta(seconds=pool.failed_retry_s + 1))
    assert report.reconciled["vm02"] == "deallocating" and "vm02" in report.deallocating


def test_pool_changes_move_a_failed_vm(pool: Scaler, fake_arm: FakeArm) -> None:
    pool.registry.transition("vm01", VmState.FAILED, [VmState.DEALLOCATED], reason="died")
    assert pool.start("vm01").state == VmState.STARTING  # pool.start
    pool.registry.transition("vm02", VmState.FAILED, [VmState.DEALLOCATED], reason="died")
    fake_arm.vms["vm02"]["power"] = "running"
    stopped = pool.stop("vm02")  # pool.stop and pool.remove deallocate it
    assert stopped.state == VmState.DEALLOCATING and stopped.busy == 0


def test_a_vm_started_outside_the_pool_is_adopted(pool: Scaler, fake_arm: FakeArm) -> None:
    fake_arm.vms["vm02"]["power"] = "running"
    report = pool.reconcile()
    assert report.reconciled == {"vm02": "running"}
    pool.reconcile()
    rec = pool.registry.get("vm02")
    assert rec.state == VmState.RUNNING and rec.private_ip == "10.0.0.4"


def test_a_failed_vm_that_heartbeats_later_is_taken_back(pool: Scaler,
                                                        fake_arm: FakeArm) -> None:
    fake_arm.op_polls = 1000
    t0 = datetime.now(timezone.utc) - timedelta(seconds=600)
    pool.start("vm01", now=t0)
    pool.run_once(now=t0 + timedelta(seconds=301))
    assert pool.registry.get("vm01").state == VmState.FAILED
    pool.reconcile()
    assert pool.registry.get("vm01").state == VmState.FAILED  # no sign of life yet
    fake_arm.vms["vm01"]["power"] = "running"  # the slow boot finished after all
    pool.registry.heartbeat("vm01")
    report = pool.reconcile()
    assert report.reconciled == {"vm01": "running"}
    assert pool.registry.get("vm01").reason.startswith("recovered")


def test_reconcile_is_rate_limited_for_event_driven_passes(pool: Scaler,
                                                          fake_arm: FakeArm) -> None:
    pool.min_reconcile_interval_s = 3600
    pool.run_once()
    pool.run_once()
    assert len(fake_arm.list_calls()) == 1  # one look at the pool, not two
    assert not fake_arm.seen("GET", "/instanceView")


def test_throttled_reconcile_stops_asking(pool: Scaler, fake_arm: FakeArm) -> None:
    fake_arm.throttle("list", times=10, retry_after="5")
    report = pool.reconcile()
    assert list(report.errors) == ["vm01"] and "retry after 5s" in report.errors["vm01"]
    assert len(fake_arm.list_calls()) == 1
    assert [r.state for r in pool.registry.list()] == [VmState.DEALLOCATED] * 3


def _pool_of(count: int, settings: Settings, connection: StorageConnection,
             registry: PoolRegistry, fake_arm: FakeArm, **options: Any) -> Scaler:
    backend = fake_arm.backend(retry_total=0, **options)
    for i in range(1, count + 1):
        fake_arm.add_vm(f"vm{i:02d}", power="running" if i % 3 == 0 else "deallocated")
    sync_members(registry, f"vm01..vm{count:02d}", 1, backend)
    return _scaler(settings, connection, registry, backend, max_running=count)


def test_a_pass_over_many_vms_lists_them_once(settings: Settings, connection: StorageConnection,
                                             registry: PoolRegistry, fake_arm: FakeArm) -> None:
    scaler = _pool_of(12, settings, connection, registry, fake_arm)
    fake_arm.requests.clear()
    report = scaler.run_once()
    (listing,) = fake_arm.list_calls()
    assert listing["query"]["$expand"] == "instanceView"
    assert not fake_arm.seen("GET", "/instanceView")  # no request per VM
    # What the listing said is what the table now holds: vm03, vm06, ... run outside the pool.
    running = {f"vm{i:02d}" for i in range(3, 13, 3)}
    assert {vm for vm, state in report.reconciled.items() if state == "running"} == running
    assert [r for r in fake_arm.requests if r["method"] == "GET"] == [listing]  # nothing else


def test_the_listing_follows_next_links(settings: Settings, connection: StorageConnection,
                                        registry: PoolRegistry, fake_arm: FakeArm) -> None:
    fake_arm.list_page_size = 5
    scaler = _pool_of(12, settings, connection, registry, fake_arm)
    report = scaler.reconcile()
    assert len(fake_arm.list_calls()) == 3  # 5 + 5 + 2
    assert not fake_arm.seen("GET", "/instanceView") and report.errors == {}
    assert scaler.registry.get("vm12").state == VmState.RUNNING


def test_a_vm_acted_on_in_the_pass_is_read_again(pool: Scaler, fake_arm: FakeArm) -> None:
    """A start refused as conflicting is judged on the VM's power now, not the listing's."""
    with pool.backend.one_pass():
        assert pool.backend.power_state("vm01") == "deallocated"  # the listing
        fake_arm.vms["vm01"]["power"] = "starting"  # someone else started it meanwhile
        assert pool.backend.power_state("vm01") == "deallocated"  # still the listing
        report = ScaleReport()
        pool.start("vm01", report=report)  # 409: the conflict handler looks at vm01 itself
        assert "409" in report.errors["vm01"]
        assert pool.backend.power_state("vm01") == "starting"
    assert len(fake_arm.list_calls()) == 1
    assert len(fake_arm.seen("GET", "/vm01/instanceView")) == 2  # the handler's, and ours
    assert pool.registry.get("vm01").state == VmState.STARTING


def test_vms_missing_from_the_listing_fail(pool: Scaler, fake_arm: FakeArm) -> None:
    del fake_arm.vms["vm02"]
    report = pool.reconcile()
    assert report.reconciled == {"vm02": "failed"}
    assert "was not found" in pool.registry.get("vm02").reason
    assert len(fake_arm.list_calls()) == 1


def test_a_refused_expansion_falls_back_to_one_look_per_vm(
        settings: Settings, connection: StorageConnection, registry: PoolRegistry,
        fake_arm: FakeArm) -> None:
    fake_arm.refuse_list_expand = True
    scaler = _pool_of(4, settings, connection, registry, fake_arm)
    report = scaler.reconcile()
    assert report.errors == {} and report.reconciled == {"vm03": "running"}
    assert len(fake_arm.list_calls()) == 1 and scaler.backend.list_expand_refused
    assert len(fake_arm.seen("GET", "/instanceView")) == 4
    scaler.reconcile()
    assert len(fake_arm.list_calls()) == 1  # not asked again


def test_external_backend_follows_heartbeats(settings: Settings, connection: StorageConnection,
                                             registry: PoolRegistry) -> None:
    backend = ExternalBackend(registry, heartbeat_timeout_s=60)
    registry.ensure_members(["k8s-1", "k8s-2"], 1)
    scaler = _scaler(settings, connection, registry, backend)
    registry.heartbeat("k8s-1", {"private_ip": "10.244.0.7"})
    assert backend.power_state("k8s-1") == "running"
    assert backend.power_state("k8s-2") == "deallocated"
    report = scaler.reconcile()
    assert report.reconciled == {"k8s-1": "running"}
    later = datetime.now(timezone.utc) + timedelta(seconds=120)
    assert backend.power_state("k8s-1", now=later) == "deallocated"
    assert backend.addresses("k8s-1") == {"private_ip": "10.244.0.7", "public_ip": None}
    op = backend.start("k8s-2")
    assert backend.poll(op).succeeded
    # the scaler decides nothing for machines it does not run: a backlog starts nothing
    for _ in range(3):
        scaler.queue.send_message("w")
    report = scaler.run_once()
    assert report.actions is not None and report.actions.start == ("k8s-2",)
    assert report.started == []
    assert registry.get("k8s-2").state == VmState.DEALLOCATED
    with pytest.raises(VmNotFound, match="not a member"):
        backend.power_state("ghost")


def test_local_pool_end_to_end(settings: Settings, connection: StorageConnection,
                               registry: PoolRegistry, storage_env: dict[str, str],
                               tmp_path: Path) -> None:
    """Backlog -> the scaler spawns an agent -> it heartbeats -> idle -> it is stopped."""
    env = {**local_agent_env(settings, storage_env), "AGENT_STANDIN_HEARTBEAT": "1",
           "AGENT_STANDIN_ROOT": str(ROOT)}
    backend = LocalBackend(tmp_path, [sys.executable, str(STANDIN)], agent_env=env,
                           stop_grace_s=5)
    sync_members(registry, "vm01", 1, backend)
    scaler = _scaler(settings, connection, registry, backend, idle_cooldown_s=0.0)
    try:
        _enqueue(scaler, 1)
        assert scaler.run_once().started == ["vm01"]
        _wait(lambda: registry.get("vm01").state == VmState.RUNNING, "the agent's heartbeat")
        scaler.queue.clear_messages()
        report = scaler.run_once()
        assert report.deallocating == ["vm01"]
        _wait(lambda: backend.power_state("vm01") == "deallocated", "the agent to stop")
        scaler.run_once()
        assert registry.get("vm01").state == VmState.DEALLOCATED
        assert (backend.work_dir("vm01") / "drained").exists()
    finally:
        backend.stop_grace_s = 0
        backend.deallocate("vm01")


def test_run_scaler_from_settings(storage_env: dict[str, str], connection: StorageConnection,
                                  fake_arm: FakeArm) -> None:
    """The timer's entry point: members from POOL_VMS, the azure backend from settings."""
    env = {**storage_env, "POOL_BACKEND": "azure", "POOL_VMS": "vm01..vm02", "VM_SLOTS": "2",
           "AZURE_SUBSCRIPTION_ID": fake_arm.subscription,
           "POOL_RESOURCE_GROUP": fake_arm.resource_group, "ARM_ENDPOINT": fake_arm.base_url}
    settings = Settings.from_env(env)
    ensure_resources(settings, connection)
    fake_arm.add_vm("vm01")
    fake_arm.add_vm("vm02")
    connection.queue(settings.work_queue).send_message("w")
    report = run_scaler(Services(settings, connection), credential=fake_arm.credential(),
                        polling_interval=0)
    assert report.started == ["vm01"] and report.errors == {}
    registry = PoolRegistry(connection.table_service().get_table_client(settings.vm_table))
    rows = {r.name: r for r in registry.list()}
    assert sorted(rows) == ["vm01", "vm02"] and rows["vm02"].slots == 2
    assert rows["vm01"].state == VmState.STARTING
    assert rows["vm01"].backend_id == fake_arm.rid("Microsoft.Compute", "virtualMachines",
                                                   "vm01")
    with pytest.raises(SettingError, match="POOL_VMS"):
        run_scaler(Services(Settings.from_env({**env, "POOL_VMS": "vm09..vm01"}), connection),
                   credential=fake_arm.credential())
    assert [r.name for r in registry.list()] == ["vm01", "vm02"]


def _wait(check: Any, what: str, limit_s: float = 30.0) -> None:
    if not poll(check, limit_s):
        raise AssertionError(f"gave up waiting for {what}")


def test_a_vm_a_pool_change_holds_is_left_to_the_change(settings: Settings,
                                                        connection: StorageConnection,
                                                        registry: PoolRegistry,
                                                        fake_arm: FakeArm) -> None:
    """With a warm floor of two, the policy would start again the VM a pool.stop or
    pool.remove is stopping; while the change holds it, the pass leaves it alone."""
    from shared.changes import run_step  # noqa: PLC0415

    backend = fake_arm.backend(retry_total=0)
    for vm in ("vm01", "vm02"):
        fake_arm.add_vm(vm)
    sync_members(registry, "vm01..vm02", 1, backend)
    warm = _scaler(settings, connection, registry, backend, min_running=2)
    result = run_step(warm, {"vm": "vm02", "step": "drain", "status": "running"}, {}, None, 1)
    assert result["done"] and not result["error"]
    assert registry.get("vm02").held(datetime.now(timezone.utc))
    report = warm.run_once()
    assert report.started == ["vm01"]  # the floor is met without the held VM
    assert registry.get("vm02").state == VmState.DEALLOCATED
    # A hold that is not renewed (the change failed or was cancelled) lets go on its own.
    later = datetime.now(timezone.utc) + timedelta(minutes=11)
    assert not registry.get("vm02").held(later)
    assert "vm02" in [vm.name for vm in warm.snapshot(now=later).vms]
    # An operator's pool.start lets go at once.
    run_step(warm, {"vm": "vm02", "step": "start", "status": "running"}, {}, None, 1)
    assert registry.get("vm02").held_until is None
