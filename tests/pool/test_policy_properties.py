"""Property tests for the pool policy: the rules hold for any pool view hypothesis can build."""
from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.pool.policy import Actions, PolicyConfig, Snapshot, VmView, decide

NOW = 1_000_000.0
ACTIVE = ("running", "starting", "draining")
STATE_NAMES = ("deallocated", "starting", "running", "draining", "deallocating", "failed")


@st.composite
def vm_views(draw: st.DrawFn, name: str) -> VmView:
    state = draw(st.sampled_from(STATE_NAMES))
    slots = draw(st.integers(1, 4))
    can_hold_work = state in ACTIVE
    busy = draw(st.integers(0, slots)) if can_hold_work else 0
    idle_since = None
    if state in ("running", "draining") and busy == 0:
        idle_since = NOW - draw(st.floats(0, 2000, allow_nan=False))
    return VmView(name=name, state=state, slots=slots, busy=busy, idle_since=idle_since,
                  state_since=NOW - draw(st.floats(0, 3000, allow_nan=False)),
                  boot_estimate_s=draw(st.floats(0, 400, allow_nan=False)))


@st.composite
def cases(draw: st.DrawFn) -> tuple[Snapshot, PolicyConfig]:
    count = draw(st.integers(0, 12))
    vms = tuple(draw(vm_views(f"vm{i:02d}")) for i in range(count))
    max_running = draw(st.integers(0, count + 2))
    config = PolicyConfig(
        max_running=max_running,
        idle_cooldown_s=draw(st.floats(0, 600, allow_nan=False)),
        boot_timeout_s=draw(st.floats(1, 1500, allow_nan=False)),
        min_running=draw(st.integers(0, max_running)))
    rate = draw(st.none() | st.floats(0, 2, allow_nan=False))
    snapshot = Snapshot(vms=vms, queued=draw(st.integers(0, 60)),
                        in_flight=sum(v.busy for v in vms), now=NOW, arrivals_per_s=rate)
    return snapshot, config


def apply(snapshot: Snapshot, actions: Actions) -> Snapshot:
    """What the pool looks like right after the scaler carried the actions out."""
    new_state = {**{n: "starting" for n in actions.start},
                 **{n: "deallocating" for n in actions.deallocate},
                 **{n: "failed" for n in actions.mark_failed},
                 **{n: "draining" for n in actions.drain}}
    vms = tuple(
        dataclasses.replace(v, state=new_state[v.name], state_since=snapshot.now,
                            idle_since=None if new_state[v.name] != "draining" else v.idle_since)
        if v.name in new_state else v
        for v in snapshot.vms)
    return dataclasses.replace(snapshot, vms=vms)


def active(snapshot: Snapshot) -> int:
    return sum(1 for v in snapshot.vms if v.state in ACTIVE)


def free_capacity(snapshot: Snapshot) -> int:
    return sum(v.slots - v.busy for v in snapshot.vms if v.state in ("running", "starting"))


def by_name(snapshot: Snapshot) -> dict[str, VmView]:
    return {v.name: v for v in snapshot.vms}


@settings(max_examples=150, deadline=None)
@given(cases())
def test_never_starts_beyond_the_maximum(case: tuple[Snapshot, PolicyConfig]) -> None:
    snapshot, config = case
    actions = decide(snapshot, config)
    if actions.start:
        assert active(apply(snapshot, actions)) <= config.max_running


@settings(max_examples=150, deadline=None)
@given(cases())
def test_never_stops_a_busy_vm_nor_starts_anything_not_deallocated(
        case: tuple[Snapshot, PolicyConfig]) -> None:
    snapshot, config = case
    actions = decide(snapshot, config)
    vms = by_name(snapshot)
    for name in actions.deallocate:
        assert vms[name].busy == 0
        assert vms[name].state in ACTIVE
    for name in actions.start:
        assert vms[name].state == "deallocated"  # so never a failed one
    for name in actions.mark_failed:
        assert vms[name].state == "starting"
    for name in actions.drain:
        assert vms[name].state == "running"
    named = [*actions.start, *actions.deallocate, *actions.mark_failed, *actions.drain]
    assert len(named) == len(set(named))
    for group in (actions.start, actions.deallocate, actions.mark_failed, actions.drain):
        assert list(group) == sorted(group)


@settings(max_examples=150, deadline=None)
@given(cases())
def test_one_evaluation_reaches_enough_capacity(case: tuple[Snapshot, PolicyConfig]) -> None:
    snapshot, config = case
    after = apply(snapshot, decide(snapshot, config))
    startable = any(v.state == "deallocated" for v in after.vms)
    at_limit = active(after) >= config.max_running
    assert free_capacity(after) >= snapshot.queued or at_limit or not startable


@settings(max_examples=150, deadline=None)
@given(cases())
def test_evaluating_again_asks_for_no_further_starts(case: tuple[Snapshot, PolicyConfig]) -> None:
    snapshot, config = case
    after = apply(snapshot, decide(snapshot, config))
    again = decide(after, config)
    assert again.start == ()
    assert again.mark_failed == ()
    assert again.drain == ()


@settings(max_examples=100, deadline=None)
@given(cases(), st.randoms(use_true_random=False))
def test_same_view_gives_same_actions_in_any_vm_order(
        case: tuple[Snapshot, PolicyConfig], rnd) -> None:
    snapshot, config = case
    shuffled = list(snapshot.vms)
    rnd.shuffle(shuffled)
    assert decide(snapshot, config) == decide(
        dataclasses.replace(snapshot, vms=tuple(shuffled)), config)


@settings(max_examples=150, deadline=None)
@given(cases())
def test_keeps_min_running_and_never_strands_queued_work(
        case: tuple[Snapshot, PolicyConfig]) -> None:
    snapshot, config = case
    actions = decide(snapshot, config)
    after = apply(snapshot, actions)
    # within the limit, stopping idle VMs never takes away a slot that queued work needs; only
    # VMs that failed to boot lose their free slots (and are replaced where possible)
    vms = by_name(snapshot)
    if sum(1 for v in snapshot.vms if v.state in ("running", "starting")) <= config.max_running:
        lost = sum(vms[n].slots - vms[n].busy for n in actions.mark_failed)
        assert free_capacity(after) >= min(free_capacity(snapshot) - lost, snapshot.queued)
    def up(view: Snapshot) -> int:
        return sum(1 for v in view.vms if v.state in ("running", "starting"))

    startable = sum(1 for v in snapshot.vms if v.state == "deallocated")
    leaving = len(actions.mark_failed) + len(actions.drain)
    reachable = min(config.min_running, up(snapshot) - leaving + startable)
    assert up(after) >= reachable or active(after) >= config.max_running
