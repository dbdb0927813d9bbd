"""The policy's spot rules: spot members first, on-demand ones as the fallback, and an evicted
VM left alone for the back-off period."""
from __future__ import annotations

import dataclasses

import pytest

from shared.pool.policy import (
    EVICTED,
    REGULAR,
    SPOT,
    PolicyConfig,
    PolicyInputError,
    Snapshot,
    VmView,
    decide,
    startable,
)

NOW = 1_000_000.0
CFG = PolicyConfig(max_running=10, idle_cooldown_s=120, boot_timeout_s=600, spot_backoff_s=900)


def vm(name: str, state: str = "deallocated", *, priority: str = REGULAR, busy: int = 0,
       idle_for: float | None = None, since: float = 5000.0, boot: float = 90.0) -> VmView:
    return VmView(name=name, state=state, slots=1, busy=busy,
                  idle_since=NOW - idle_for if idle_for is not None else None,
                  state_since=NOW - since, boot_estimate_s=boot, priority=priority)


def snap(*vms: VmView, queued: int = 0, rate: float | None = None) -> Snapshot:
    return Snapshot(vms=tuple(vms), queued=queued, in_flight=sum(v.busy for v in vms), now=NOW,
                    arrivals_per_s=rate)


def test_spot_members_start_before_on_demand_ones_even_when_slower() -> None:
    pool = (vm("vm01", boot=60), vm("vm02", boot=60), vm("spot01", priority=SPOT, boot=120),
            vm("spot02", priority=SPOT, boot=150))
    assert decide(snap(*pool, queued=3), CFG).start == ("spot01", "spot02", "vm01")


def test_an_evicted_vm_is_not_started_again_before_its_back_off() -> None:
    pool = (vm("spot01", EVICTED, priority=SPOT, since=899), vm("vm01"))
    assert decide(snap(*pool, queued=1), CFG).start == ("vm01",)
    later = (vm("spot01", EVICTED, priority=SPOT, since=900), vm("vm01"))
    assert decide(snap(*later, queued=1), CFG).start == ("spot01",)


def test_startable_only_deallocated_or_evicted_past_the_back_off() -> None:
    assert startable(vm("a"), NOW, CFG)
    assert not startable(vm("a", "running"), NOW, CFG)
    assert not startable(vm("a", EVICTED, priority=SPOT, since=10), NOW, CFG)
    assert startable(vm("a", EVICTED, priority=SPOT, since=10), NOW,
                     dataclasses.replace(CFG, spot_backoff_s=5))


def test_an_idle_on_demand_vm_goes_before_an_idle_spot_vm() -> None:
    # One warm slot is wanted (one arrival per boot); the spot VM keeps it, on-demand goes.
    pool = (vm("vm01", "running", idle_for=30), vm("spot01", "running", priority=SPOT,
                                                     idle_for=10))
    actions = decide(snap(*pool, rate=1 / 90), CFG)
    assert actions.deallocate == ("vm01",)


def test_an_evicted_vm_counts_as_down_for_the_pool_minimum() -> None:
    cfg = dataclasses.replace(CFG, min_running=1)
    pool = (vm("spot01", EVICTED, priority=SPOT, since=10), vm("vm01"))
    assert decide(snap(*pool), cfg).start == ("vm01",)


def test_unknown_priority_is_refused() -> None:
    with pytest.raises(PolicyInputError, match="priority"):
        vm("vm01", priority="low")
