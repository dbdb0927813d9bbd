"""The simulator's control plane (dispatch rate and latency, agent polling, a scaler that reacts
late): at its defaults every figure is what it was before it existed; when it is not ideal it
can only delay work."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.baselines import AlwaysOn, baselines
from bench.project import ProjectController
from bench.sim import ARRIVAL, COMPLETE, ControlPlane, simulate
from bench.traces import Job, PoolParams, Trace, burst, steady

TWIN_POOL = PoolParams(vms=3, slots=2, boot_s=3.0, deallocate_s=2.0, idle_cooldown_s=4.0,
                       boot_timeout_s=20.0)

# (trace, pool VMs) -> policy -> (billed_s, sum of waits, makespan_s, VM starts), as the
# simulator gave them (seed 1) before it had a control plane: repr-exact floats.
BEFORE = {
    ("burst", 320): {
        "project": (466040.32896201714, 27233.990163906317, 21177.71695711651, 352),
        "always_on": (9216000.0, 0.0, 21090.840751705236, 0),
        "seed_naive": (470758.7744967328, 31952.435698621986, 21199.541613555015, 352),
        "batch_autoscale": (556920.0, 107088.0255703962, 21358.21024826064, 352),
        "keda": (581340.0, 34667.664319030446, 21199.353454399145, 352)},
    ("steady", 48): {
        "project": (245121.58782024687, 6270.476510347752, 14182.497220262932, 100),
        "always_on": (683787.6540438937, 0.0, 14182.497220262932, 0),
        "seed_naive": (255663.65934965538, 17214.42580278282, 14265.238671008163, 184),
        "batch_autoscale": (257031.0597850301, 15860.377531626411, 14182.497220262932, 60),
        "keda": (262140.0, 5842.035125156809, 14198.082260665722, 63)},
    ("steady", 3): {
        "project": (68509.01589443562, 660728.8296300585, 23143.201905217044, 3),
        "always_on": (69466.3020919876, 660592.8537773836, 23139.759477375643, 0),
        "seed_naive": (69097.28652187312, 712334.3408427954, 28351.402914588485, 3),
        "batch_autoscale": (69306.0, 686930.8495607752, 23372.455191125562, 3),
        "keda": (69366.0, 661626.4079475577, 23152.12284862752, 3)},
}
SCENARIOS = [(burst(1, hours=8.0), PoolParams(vms=320)),
             (steady(1, hours=3.0), PoolParams(vms=48)),
             (steady(2, hours=2.0), TWIN_POOL)]


@pytest.mark.parametrize("plane", [None, ControlPlane()], ids=["omitted", "defaults"])
def test_at_its_defaults_the_control_plane_changes_no_figure(plane: ControlPlane | None) -> None:
    for trace, params in SCENARIOS:
        for controller in [ProjectController(), *(cls() for cls in baselines())]:
            result = simulate(trace, params, controller, 1, plane=plane)
            got = (result.billed_s, sum(result.waits_s), result.makespan_s, result.starts)
            assert got == BEFORE[(trace.name, params.vms)][controller.name], controller.name
    # a controller told the defaults explicitly behaves as the one told nothing
    trace, params = SCENARIOS[0]
    explicit = ProjectController(tick_s=30.0, reaction_s=0.0, triggers=None)
    assert (simulate(trace, params, explicit, 1).figures()
            == simulate(trace, params, ProjectController(), 1).figures())


def test_the_dispatcher_issues_in_order_no_faster_than_its_rate() -> None:
    plane = ControlPlane(dispatch_rate=2.0, dispatch_latency_s=0.5)
    assert plane.issued_at([0.0, 0.0, 0.0, 10.0]) == [0.5, 1.0, 1.5, 10.5]
    assert ControlPlane().issued_at([3.0, 3.0]) == [3.0, 3.0]
    with pytest.raises(ValueError, match="positive"):
        ControlPlane(dispatch_rate=0.0)


def test_a_slow_dispatcher_makes_a_batch_wait_for_it() -> None:
    """Six files at once on six warm slots: the k-th is issued k / rate after the first."""
    trace = Trace("batch", tuple(Job(i, 10.0, 30.0) for i in range(6)), 200.0)
    result = simulate(trace, TWIN_POOL, AlwaysOn(), 1, plane=ControlPlane(dispatch_rate=2.0))
    assert result.waits_s == (0.0, 0.5, 1.0, 1.5, 2.0, 2.5)


def test_an_idle_agent_finds_work_late_a_booting_one_at_once() -> None:
    """Polling delays work for a slot that was waiting, not for a VM's first look at the queue
    (its agent polls as soon as it is up)."""
    params = PoolParams(vms=1, slots=2, boot_s=3.0, boot_spread=0.0, boot_jitter=0.0,
                        deallocate_s=2.0, idle_cooldown_s=60.0)
    trace = Trace("two", (Job(0, 0.0, 30.0), Job(1, 10.0, 5.0)), 40.0)
    result = simulate(trace, params, ProjectController(), 1, plane=ControlPlane(poll_s=0.5))
    assert result.waits_s == pytest.approx((3.0, 0.5))


def test_a_late_scaler_starts_the_vms_late() -> None:
    trace = Trace("batch", tuple(Job(i, 10.0, 30.0) for i in range(4)), 200.0)
    params = PoolParams(vms=4, boot_s=3.0, boot_spread=0.0, boot_jitter=0.0, deallocate_s=2.0,
                        idle_cooldown_s=4.0)
    prompt = simulate(trace, params, ProjectController(), 1)
    late = simulate(trace, params, ProjectController(reaction_s=1.5,
                                                     triggers=frozenset({ARRIVAL, COMPLETE})), 1)
    assert max(prompt.waits_s) == pytest.approx(3.0)
    assert max(late.waits_s) == pytest.approx(4.5)


jobs = st.lists(st.tuples(st.floats(0.0, 600.0), st.floats(1.0, 300.0)), min_size=1,
                max_size=25)
planes = st.builds(ControlPlane,
                   dispatch_rate=st.one_of(st.floats(0.01, 50.0), st.just(math.inf)),
                   dispatch_latency_s=st.floats(0.0, 30.0), poll_s=st.floats(0.0, 10.0),
                   job_overhead_s=st.floats(0.0, 5.0))


def _trace(pairs: list[tuple[float, float]]) -> Trace:
    ordered = sorted(pairs)
    return Trace("t", tuple(Job(i, at, d) for i, (at, d) in enumerate(ordered)), 700.0)


@settings(max_examples=60, deadline=None)
@given(pairs=jobs, plane=planes, vms=st.integers(1, 4), slots=st.integers(1, 3))
def test_a_control_plane_never_shortens_a_wait_on_warm_vms(
        pairs: list[tuple[float, float]], plane: ControlPlane, vms: int, slots: int) -> None:
    """With every VM warm the pool is a first-come-first-served queue: work issued later (or
    found later by the agent) cannot start earlier, file by file."""
    trace, params = _trace(pairs), PoolParams(vms=vms, slots=slots)
    ideal = simulate(trace, params, AlwaysOn(), 1).waits_s
    delayed = simulate(trace, params, AlwaysOn(), 1, plane=plane).waits_s
    assert all(d >= i - 1e-9 for d, i in zip(delayed, ideal, strict=True))


@settings(max_examples=60, deadline=None)
@given(pairs=jobs, plane=planes, vms=st.integers(1, 4), slots=st.integers(1, 3),
       reaction=st.floats(0.0, 20.0))
def test_under_the_policy_no_file_starts_before_its_work_item_is_issued(
        pairs: list[tuple[float, float]], plane: ControlPlane, vms: int, slots: int,
        reaction: float) -> None:
    trace = _trace(pairs)
    params = PoolParams(vms=vms, slots=slots, boot_s=30.0, deallocate_s=20.0,
                        idle_cooldown_s=40.0)
    controller = ProjectController(tick_s=5.0, reaction_s=reaction,
                                   triggers=frozenset({ARRIVAL, COMPLETE}))
    result = simulate(trace, params, controller, 1, plane=plane)
    issued = plane.issued_at([job.arrival for job in trace.jobs])
    for job, wait, at in zip(trace.jobs, result.waits_s, issued, strict=True):
        assert wait >= at - job.arrival - 1e-9
    assert result.processed == len(trace.jobs) and result.cost_ratio >= 1.0 - 1e-9
