"""Spot members on Azurite with the azure backend against the fake ARM: a spot start that
Azure refuses for capacity falls back to an on-demand member in the same scaler pass, an
evicted VM is recorded as such and left alone for the back-off, then used again."""
from __future__ import annotations

from typing import Any

import pytest

from shared.claims import ClaimStore
from shared.pool.policy import PolicyConfig
from shared.pool.registry import PoolRegistry, VmPriority, VmState
from shared.pool.scaler import Scaler, sync_members
from shared.settings import Settings
from shared.storage import StorageConnection

FakeArm = Any  # the fake ARM of conftest.py

# Each capacity refusal as Azure words it: (HTTP status of an immediate refusal, code, message)
REFUSALS = [
    (409, "SkuNotAvailable", "The requested VM size Standard_D2s_v5 is currently not "
                             "available in location 'westeurope' for Spot."),
    (409, "OverconstrainedAllocationRequest", "Allocation failed. VM(s) with the following "
                                              "constraints cannot be allocated."),
    (409, "AllocationFailed", "Allocation failed. We do not have sufficient capacity for the "
                              "requested VM size in this region."),
    (409, "OperationNotAllowed", "Operation could not be completed as it results in exceeding "
                                 "approved LowPriorityCores quota."),
]


@pytest.fixture()
def spot_pool(settings: Settings, connection: StorageConnection, registry: PoolRegistry,
              fake_arm: FakeArm) -> Scaler:
    backend = fake_arm.backend(retry_total=0)
    for vm in ("spot01", "spot02", "vm01", "vm02"):
        fake_arm.add_vm(vm)
    sync_members(registry, "vm01..vm02", 1, backend, spot_vms="spot01..spot02")
    claims = ClaimStore(connection.table_service().get_table_client(settings.claim_table))
    return Scaler(registry, backend, connection.queue(settings.work_queue), claims,
                  PolicyConfig(max_running=4, idle_cooldown_s=60.0, boot_timeout_s=300.0,
                               spot_backoff_s=900.0))


def test_members_carry_their_priority(spot_pool: Scaler) -> None:
    records = {rec.name: rec.priority for rec in spot_pool.registry.list()}
    assert records == {"spot01": VmPriority.SPOT, "spot02": VmPriority.SPOT,
                       "vm01": VmPriority.REGULAR, "vm02": VmPriority.REGULAR}


def test_spot_members_are_started_first(spot_pool: Scaler, fake_arm: FakeArm) -> None:
    spot_pool.queue.send_message("work-0")
    report = spot_pool.run_once()
    assert report.started == ["spot01"] and report.fallbacks == 0
    assert fake_arm.seen("POST", "/virtualMachines/vm01/start") == []


@pytest.mark.parametrize(("status", "code", "message"), REFUSALS, ids=[r[1] for r in REFUSALS])
def test_a_refused_spot_start_falls_back_to_on_demand_in_the_same_pass(
        spot_pool: Scaler, fake_arm: FakeArm, status: int, code: str, message: str) -> None:
    fake_arm.reject_next["start"] = (status, {"code": code, "message": message})
    spot_pool.queue.send_message("work-0")
    report = spot_pool.run_once()
    assert report.fallbacks == 1
    assert "spot01" in report.errors and code in report.errors["spot01"]
    spot01 = spot_pool.registry.get("spot01")
    assert spot01.state == VmState.EVICTED and code in spot01.reason
    # The other spot member is not tried in the same pass; an on-demand one is started.
    assert report.started == ["vm01"]
    assert spot_pool.registry.get("vm01").state == VmState.STARTING
    assert fake_arm.seen("POST", "/virtualMachines/spot02/start") == []


@pytest.mark.parametrize(("status", "code", "message"), REFUSALS, ids=[r[1] for r in REFUSALS])
def test_a_spot_start_that_fails_later_falls_back_in_the_pass_that_learns_it(
        spot_pool: Scaler, fake_arm: FakeArm, status: int, code: str, message: str) -> None:
    fake_arm.op_polls = 0  # the operation's first status poll already says Failed
    fake_arm.fail_next["start"] = {"code": code, "message": message}
    spot_pool.queue.send_message("work-0")
    assert spot_pool.run_once().started == ["spot01"]
    fake_arm.vms["spot01"]["power"] = "deallocated"  # Azure gave up on the allocation
    report = spot_pool.run_once()
    assert code in report.errors["spot01"]
    assert spot_pool.registry.get("spot01").state == VmState.EVICTED
    assert report.started == ["vm01"]


def test_an_on_demand_start_refused_for_capacity_tries_the_next_member(
        settings: Settings, connection: StorageConnection, registry: PoolRegistry,
        fake_arm: FakeArm) -> None:
    backend = fake_arm.backend(retry_total=0)
    for vm in ("vm01", "vm02"):
        fake_arm.add_vm(vm)
    sync_members(registry, "vm01..vm02", 1, backend)
    claims = ClaimStore(connection.table_service().get_table_client(settings.claim_table))
    scaler = Scaler(registry, backend, connection.queue(settings.work_queue), claims,
                    PolicyConfig(max_running=2, idle_cooldown_s=60.0, boot_timeout_s=300.0))
    fake_arm.reject_next["start"] = REFUSALS[2][0], {"code": REFUSALS[2][1],
                                                     "message": REFUSALS[2][2]}
    scaler.queue.send_message("work-0")
    report = scaler.run_once()
    assert registry.get("vm01").state == VmState.DEALLOCATED
    assert "AllocationFailed" in registry.get("vm01").reason
    assert report.started == ["vm02"]


def test_an_evicted_vm_is_recorded_and_not_restarted_before_its_back_off(
        spot_pool: Scaler, fake_arm: FakeArm) -> None:
    now = 1_900_000_000.0
    spot_pool.queue.send_message("work-0")
    assert spot_pool.run_once(now).started == ["spot01"]
    fake_arm.vms["spot01"]["power"] = "running"
    spot_pool.registry.transition("spot01", VmState.RUNNING, [VmState.STARTING], operation="")
    assert spot_pool.registry.claim_slot("spot01")
    fake_arm.vms["spot01"]["power"] = "deallocated"  # evicted by Azure
    report = spot_pool.run_once(now + 60)
    rec = spot_pool.registry.get("spot01")
    assert (rec.state, rec.busy) == (VmState.EVICTED, 0)
    assert "eviction" in rec.reason
    assert report.started == ["spot02"]  # the other spot member takes the work
    # Within the back-off the evicted member is not started, even with more work.
    spot_pool.queue.send_message("work-1")
    spot_pool.queue.send_message("work-2")
    later = spot_pool.run_once(now + 120)
    assert "spot01" not in later.started and later.started == ["vm01", "vm02"]
    assert spot_pool.registry.get("spot01").state == VmState.EVICTED


def test_pool_add_of_a_spot_vm_registers_it_as_spot(spot_pool: Scaler) -> None:
    from shared.changes import run_step  # noqa: PLC0415

    result = run_step(spot_pool, {"vm": "spot09", "step": "register", "status": "pending"},
                      {"priority": "spot"}, None, 1)
    assert result["done"] is True and not result["error"]
    assert spot_pool.registry.get("spot09").priority == VmPriority.SPOT


@pytest.mark.parametrize(("spec", "message"), [
    ({"priority": "cheap"}, "spec.priority"), ({"maxPrice": 0}, "spec.maxPrice"),
    ({"maxPrice": "1"}, "maxPrice"), ({"maxPrice": -2}, "spec.maxPrice")])
def test_a_bad_spot_spec_is_refused_with_a_clear_error(storage_env: dict[str, str],
                                                       spec: dict, message: str) -> None:
    from shared.api import ApiError  # noqa: PLC0415
    from shared.changes import parse_change  # noqa: PLC0415
    from shared.services import Services  # noqa: PLC0415
    from shared.storage import ensure_resources  # noqa: PLC0415

    services = Services.from_env(storage_env)
    ensure_resources(services.settings, services.connection)
    with pytest.raises(ApiError) as err:
        parse_change(services, {"changeType": "pool.add", "vms": ["spot09"], "spec": spec})
    assert err.value.status == 400 and message in str(err.value)
