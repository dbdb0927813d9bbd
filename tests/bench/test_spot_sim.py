"""Spot members in the simulator: evicted work is done once, refused spot starts fall back to
on-demand members in the same pass, and money follows the price."""
from __future__ import annotations

import dataclasses
import math
import random

import pytest

from bench.baselines import BatchMix
from bench.project import ProjectController
from bench.sim import EVICTED, STARTING, Pool, StartRefused, simulate
from bench.spot import render, run
from bench.traces import Job, PoolParams, Scenario, Trace

BASE = PoolParams(vms=4, slots=1, boot_s=60.0, deallocate_s=30.0)


def trickle(seed: int, n: int = 60) -> Trace:
    rng = random.Random(seed)
    jobs, t = [], 0.0
    for i in range(n):
        t += rng.expovariate(1 / 120)
        jobs.append(Job(i, t, rng.uniform(300, 1200)))
    return Trace("trickle", tuple(jobs), t + 3600)


def mixed(**changes: float) -> PoolParams:
    return dataclasses.replace(BASE, spot_vms=12, **changes)


def test_without_evictions_all_work_runs_on_spot_at_the_spot_price() -> None:
    trace = trickle(1)
    on_demand = simulate(trace, BASE, ProjectController(), seed=1)
    spot = simulate(trace, mixed(), ProjectController(), seed=1)
    assert spot.processed == on_demand.processed == len(trace.jobs)
    assert spot.billed_spot_s == pytest.approx(spot.billed_s)
    assert spot.money == pytest.approx(spot.billed_s * 0.2)
    assert on_demand.money == pytest.approx(on_demand.billed_s)
    assert spot.money_ratio < 0.3 * on_demand.money_ratio


def test_evicted_work_is_handed_back_and_completes_exactly_once() -> None:
    trace = trickle(2)
    result = simulate(trace, mixed(eviction_rate_per_h=2.0), ProjectController(), seed=2)
    assert result.evictions > 0
    assert result.lost_work_s > 0
    assert result.processed == len(trace.jobs)
    # Evictions cost waiting: lost processing is counted as time the file waited.
    calm = simulate(trace, mixed(), ProjectController(), seed=2)
    assert sum(result.waits_s) > sum(calm.waits_s)
    assert min(result.waits_s) >= 0


def test_a_burst_evicts_spot_vms_and_refused_starts_fall_back_to_on_demand_at_once() -> None:
    trace = Trace("one", (Job(0, 10.0, 100.0),), 1000.0)
    pool = Pool(trace, mixed(), seed=0)
    pool.now = 10.0
    pool.queue.append(0)
    pool.spot_refused_until = math.inf  # no spot capacity at all
    controller = ProjectController()
    controller.setup(pool)
    controller.evaluate(pool)
    starting = pool.in_state(STARTING)
    assert [vm.priority for vm in starting] == ["regular"]
    refused = [vm for vm in pool.vms.values() if vm.state == EVICTED]
    assert len(refused) == 1 and refused[0].priority == "spot"
    assert refused[0].boots == 0  # a refused start is not billed
    with pytest.raises(StartRefused):
        pool.start(next(n for n, v in pool.vms.items() if v.priority == "spot"
                        and v.state != EVICTED))


def test_batch_mix_keeps_a_dedicated_share_and_processes_everything() -> None:
    trace = trickle(3)
    result = simulate(trace, mixed(eviction_rate_per_h=0.5), BatchMix(), seed=3)
    assert result.processed == len(trace.jobs)
    assert 0 < result.billed_spot_s < result.billed_s


def test_the_benchmark_document_compares_each_pool_to_the_on_demand_one() -> None:
    scenario = Scenario(trickle(4, n=120), BASE)
    document = run(seed=1, quick=True, spot_price=0.2, rates=[0.0, 2.0], chosen=[scenario])
    assert set(document["traces"]) == {"trickle"}
    for by_rate in document["traces"].values():
        assert set(by_rate) == {"0", "2"}
        for rows in by_rate.values():
            assert set(rows) == {"on_demand", "project_mix", "batch_mix"}
            assert rows["on_demand"]["money_vs_on_demand"] == 1.0
            assert rows["project_mix"]["money_vs_on_demand"] < 1.0
        assert by_rate["0"]["project_mix"]["evictions"] == 0
        assert by_rate["2"]["project_mix"]["evictions"] > 0
    table = render(document)
    assert "project_mix" in table and "batch_mix" in table
