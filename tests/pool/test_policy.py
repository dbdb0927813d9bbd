"""Example tests for the pool policy: one per rule, and bad input."""
from __future__ import annotations

import pytest

from shared.pool.policy import (
    Actions,
    PolicyConfig,
    PolicyInputError,
    Snapshot,
    VmView,
    arrival_rate,
    decide,
    effective_cooldown,
    warm_reserve,
)

NOW = 1_000_000.0
CFG = PolicyConfig(max_running=10, idle_cooldown_s=120, boot_timeout_s=600)


def vm(name: str, state: str = "deallocated", *, slots: int = 1, busy: int = 0,
       idle_for: float | None = None, since: float = 1000.0, boot: float = 90.0) -> VmView:
    idle_since = NOW - idle_for if idle_for is not None else None
    return VmView(name=name, state=state, slots=slots, busy=busy, idle_since=idle_since,
                  state_since=NOW - since, boot_estimate_s=boot)


def snap(*vms: VmView, queued: int = 0, in_flight: int | None = None,
         rate: float | None = None, pending: int = 0) -> Snapshot:
    flight = sum(v.busy for v in vms) if in_flight is None else in_flight
    return Snapshot(vms=tuple(vms), queued=queued, in_flight=flight, now=NOW,
                    arrivals_per_s=rate, pending=pending)


def test_running_vm_with_free_slot_takes_the_work_no_start() -> None:
    actions = decide(snap(vm("vm01", "running", slots=2, busy=1), vm("vm02"), queued=1), CFG)
    assert actions == Actions(start=(), deallocate=(), mark_failed=())


def test_no_free_slot_starts_a_deallocated_vm() -> None:
    actions = decide(snap(vm("vm01", "running", busy=1), vm("vm02"), queued=1), CFG)
    assert actions.start == ("vm02",)


def test_whole_backlog_gets_capacity_in_one_evaluation() -> None:
    vms = [vm("vm01", "running", slots=2, busy=1)] + [vm(f"vm0{i}", slots=2) for i in range(2, 8)]
    actions = decide(snap(*vms, queued=7), CFG)
    # 1 free slot on vm01, then 3 VMs x 2 slots = 7
    assert len(actions.start) == 3


def test_starting_vms_count_as_capacity_before_new_starts() -> None:
    actions = decide(snap(vm("vm01", "starting", slots=2, since=10), vm("vm02"), queued=2), CFG)
    assert actions.start == ()
    actions = decide(snap(vm("vm01", "starting", slots=2, since=10), vm("vm02"), queued=3), CFG)
    assert actions.start == ("vm02",)


def test_prefers_the_fastest_booting_vm_then_name() -> None:
    vms = [vm("vm01", boot=120), vm("vm02", boot=60), vm("vm03", boot=60), vm("vm04", boot=30)]
    actions = decide(snap(*vms, queued=2), CFG)
    assert actions.start == ("vm02", "vm04")


def test_max_running_counts_running_starting_and_draining() -> None:
    cfg = PolicyConfig(max_running=3, idle_cooldown_s=120, boot_timeout_s=600)
    vms = [vm("vm01", "running", busy=1), vm("vm02", "starting", since=5),
           vm("vm03", "draining", busy=1), vm("vm04"), vm("vm05")]
    assert decide(snap(*vms, queued=5), cfg).start == ()
    cfg4 = PolicyConfig(max_running=4, idle_cooldown_s=120, boot_timeout_s=600)
    assert decide(snap(*vms, queued=5), cfg4).start == ("vm04",)


def test_at_the_limit_work_stays_queued_and_nothing_is_stopped() -> None:
    cfg = PolicyConfig(max_running=2, idle_cooldown_s=0, boot_timeout_s=600)
    vms = [vm("vm01", "running", busy=1), vm("vm02", "running", busy=1), vm("vm03")]
    assert decide(snap(*vms, queued=9), cfg).empty


def test_busy_vm_is_never_deallocated_however_long_ago_it_started() -> None:
    cfg = PolicyConfig(max_running=10, idle_cooldown_s=0, boot_timeout_s=600)
    actions = decide(snap(vm("vm01", "running", busy=1, since=10**6)), cfg)
    assert actions.deallocate == ()


def test_idle_vm_is_kept_during_cooldown_then_deallocated() -> None:
    assert decide(snap(vm("vm01", "running", idle_for=30)), CFG).deallocate == ()
    assert decide(snap(vm("vm01", "running", idle_for=95)), CFG).deallocate == ("vm01",)


def test_cooldown_is_capped_at_the_restart_cost_and_never_exceeds_the_setting() -> None:
    fast = vm("vm01", "running", idle_for=70, boot=40)
    assert effective_cooldown(fast, CFG) == 60  # min_warm_s: a fast boot is no reason to flap
    assert decide(snap(fast), CFG).deallocate == ("vm01",)
    mid = vm("vm01", "running", idle_for=95, boot=90)
    assert effective_cooldown(mid, CFG) == 90
    assert decide(snap(mid), CFG).deallocate == ("vm01",)
    slow = vm("vm01", "running", idle_for=130, boot=900)
    assert effective_cooldown(slow, CFG) == 120
    assert decide(snap(slow), CFG).deallocate == ("vm01",)


def test_fast_boots_do_not_collapse_the_warm_time() -> None:
    seconds = vm("vm01", "running", idle_for=5, boot=2)  # a local agent "boots" in seconds
    assert decide(snap(seconds, rate=0.05), CFG).deallocate == ()
    assert decide(snap(vm("vm01", "running", idle_for=61, boot=2)), CFG).deallocate == (
        "vm01",)
    short = PolicyConfig(max_running=10, idle_cooldown_s=3, boot_timeout_s=600)
    assert effective_cooldown(seconds, short) == 3  # never past the configured cooldown


def test_no_idle_vm_stops_while_work_waits_or_is_on_its_way() -> None:
    idle = vm("vm01", "running", idle_for=500)
    assert decide(snap(idle), CFG).deallocate == ("vm01",)
    assert decide(snap(idle, pending=3), CFG).deallocate == ()
    assert decide(snap(idle, vm("vm02", "starting"), queued=1), CFG).deallocate == ()


def test_only_a_small_warm_reserve_survives_a_batch_tail() -> None:
    idle = [vm(f"vm0{i}", "running", idle_for=10 * i) for i in range(1, 6)]
    busy = [vm("vm10", "running", busy=1), vm("vm11", "running", busy=1)]
    actions = decide(snap(*idle, *busy), CFG)
    keep = warm_reserve(2)
    # the VMs idle longest stay warm (they are the first to expire); the rest stop now
    assert keep < 5
    assert set(actions.deallocate) == {f"vm0{i}" for i in range(1, 6 - keep)}


def test_warm_reserve_grows_with_the_square_root_of_busy_slots() -> None:
    assert warm_reserve(0) == 1
    assert warm_reserve(1) >= 1
    assert warm_reserve(100) > warm_reserve(4) >= warm_reserve(1)


def test_with_a_known_arrival_rate_the_reserve_covers_one_boot_of_arrivals() -> None:
    idle = [vm(f"vm0{i}", "running", idle_for=10 * i, boot=90) for i in range(1, 7)]
    busy = [vm("vm10", "running", busy=1, boot=90)]
    # 1 file every 30 s, boot 90 s: 3 files arrive during a cold start -> keep 3 warm
    actions = decide(snap(*idle, *busy, rate=1 / 30), CFG)
    assert actions.deallocate == ("vm01", "vm02", "vm03")
    assert warm_reserve(5, 1 / 30, 90) == 3
    # arrivals rarer than one per two boots: a warm VM costs more than the boot it saves
    assert warm_reserve(5, 1 / 200, 90) == 0
    assert len(decide(snap(*idle, *busy, rate=1 / 200), CFG).deallocate) == 6


def test_arrival_rate_counts_the_window_but_forgets_a_batch_that_went_silent() -> None:
    assert arrival_rate([], NOW) == 0.0
    steady = [NOW - 60 * i for i in range(10)]  # one a minute, the last just now
    assert arrival_rate(steady, NOW, window_s=600) == pytest.approx(10 / 600)
    batch = [NOW - 300] * 250  # 250 files at once, five minutes ago, nothing since
    assert arrival_rate(batch, NOW, window_s=600) == pytest.approx(1 / 300)
    assert arrival_rate([NOW - 700], NOW, window_s=600) == 0.0


def test_once_arrivals_stop_the_tail_of_a_batch_stops_at_once() -> None:
    idle = [vm(f"vm0{i}", "running", idle_for=5) for i in range(1, 5)]
    busy = [vm(f"vm1{i}", "running", busy=1) for i in range(4)]
    assert decide(snap(*idle, *busy, rate=0.0), CFG).deallocate == tuple(v.name for v in idle)
    # without the rate, the square-root margin keeps one of them warm
    assert len(decide(snap(*idle, *busy), CFG).deallocate) == 3


def test_free_slots_on_busy_vms_count_as_warm_capacity() -> None:
    vms = [vm("vm01", "running", slots=4, busy=1), vm("vm02", "running", slots=4, idle_for=5)]
    assert decide(snap(*vms, rate=1 / 45), CFG).deallocate == ("vm02",)  # 2 wanted, 3 warm
    assert decide(snap(*vms, rate=1 / 20), CFG).deallocate == ()


def test_idle_vm_is_kept_while_its_slot_is_needed_for_queued_work() -> None:
    actions = decide(snap(vm("vm01", "running", idle_for=10_000), queued=1), CFG)
    assert actions.empty


def test_min_running_starts_and_keeps_vms() -> None:
    cfg = PolicyConfig(max_running=5, idle_cooldown_s=0, boot_timeout_s=600, min_running=2)
    assert decide(snap(vm("vm01"), vm("vm02"), vm("vm03")), cfg).start == ("vm01", "vm02")
    idle = [vm(f"vm0{i}", "running", idle_for=999) for i in range(1, 4)]
    assert len(decide(snap(*idle), cfg).deallocate) == 1


def test_boot_timeout_marks_failed_and_starts_a_replacement() -> None:
    vms = [vm("vm01", "starting", since=601), vm("vm02")]
    actions = decide(snap(*vms, queued=1), CFG)
    assert actions.mark_failed == ("vm01",)
    assert actions.start == ("vm02",)
    assert decide(snap(vm("vm01", "starting", since=599), vm("vm02"), queued=1), CFG).empty


def test_starting_vm_holding_claimed_work_is_not_marked_failed() -> None:
    actions = decide(snap(vm("vm01", "starting", busy=1, since=9999)), CFG)
    assert actions.mark_failed == ()


def test_failed_and_deallocating_vms_are_never_started() -> None:
    vms = [vm("vm01", "failed"), vm("vm02", "deallocating", since=5)]
    assert decide(snap(*vms, queued=3), CFG).empty


def test_draining_vm_is_stopped_once_idle_only() -> None:
    vms = [vm("vm01", "draining", busy=1), vm("vm02", "draining", idle_for=1)]
    assert decide(snap(*vms), CFG).deallocate == ("vm02",)


def test_over_the_limit_idle_vms_stop_and_busy_ones_drain() -> None:
    cfg = PolicyConfig(max_running=1, idle_cooldown_s=120, boot_timeout_s=600)
    vms = [vm("vm01", "running", busy=1), vm("vm02", "running", idle_for=1),
           vm("vm03", "running", busy=1)]
    actions = decide(snap(*vms), cfg)
    assert actions.deallocate == ("vm02",)
    assert actions.drain == ("vm01",)
    assert actions.start == ()


def test_same_view_in_any_order_gives_the_same_actions() -> None:
    vms = [vm(f"vm0{i}", boot=60) for i in range(1, 8)] + [vm("vm09", "running", idle_for=500)]
    first = decide(snap(*vms, queued=3), CFG)
    again = decide(snap(*reversed(vms), queued=3), CFG)
    assert first == again
    assert first.start == ("vm01", "vm02")  # the idle running vm09 takes the third


@pytest.mark.parametrize("make", [
    lambda: vm("vm01", "stopped"),
    lambda: vm("vm01", "running", slots=1, busy=2),
    lambda: vm("vm01", slots=0),
    lambda: vm("", "running"),
    lambda: vm("vm01", boot=float("nan")),
    lambda: snap(vm("vm01"), vm("vm01")),
    lambda: snap(vm("vm01"), queued=-1),
    lambda: snap(vm("vm01"), rate=-0.5),
    lambda: snap(vm("vm01"), rate=float("inf")),
    lambda: PolicyConfig(max_running=2, idle_cooldown_s=1, boot_timeout_s=1, min_running=3),
    lambda: PolicyConfig(max_running=-1, idle_cooldown_s=1, boot_timeout_s=1),
    lambda: PolicyConfig(max_running=1, idle_cooldown_s=-5, boot_timeout_s=1),
])
def test_bad_input_is_refused_with_a_clear_error(make) -> None:
    with pytest.raises(PolicyInputError):
        make()
