"""The pool simulator on tiny traces: invariants every policy's figures must satisfy."""
from __future__ import annotations

import json
import math
import random

import pytest

from bench.baselines import AlwaysOn, BatchAutoscale, KedaScaler, SeedNaive
from bench.policy import main, plot, render_table
from bench.project import ProjectController
from bench.run import dominated_by, figures, run_scenario
from bench.sim import Pool, SimulationError, quantile, simulate
from bench.traces import (
    Job,
    PoolParams,
    Scenario,
    Trace,
    burst,
    heavy_tail,
    scenarios,
    steady,
)

POOL = PoolParams(vms=6, slots=2, boot_s=60.0, deallocate_s=30.0)


def tiny(seed: int) -> Trace:
    """A small batch, a trickle, then a second small batch, over two hours."""
    rng = random.Random(seed)
    jobs: list[Job] = []
    for _ in range(9):
        jobs.append(Job(len(jobs), 100.0, rng.uniform(60, 900)))
    t = 1200.0
    while t < 5000.0:
        jobs.append(Job(len(jobs), t, rng.lognormvariate(5.5, 0.7)))
        t += rng.expovariate(1 / 150)
    for _ in range(5):
        jobs.append(Job(len(jobs), 5400.0, rng.uniform(60, 600)))
    return Trace("tiny_burst", tuple(jobs), 7200.0)


@pytest.fixture(scope="module")
def results():
    return run_scenario(Scenario(tiny(7), POOL), seed=7)


def test_every_policy_runs_and_processes_every_job_exactly_once(results) -> None:
    trace = tiny(7)
    assert set(results) == {"project", "always_on", "seed_naive", "batch_autoscale", "keda"}
    for result in results.values():
        assert result.processed == len(trace.jobs)
        assert len(result.waits_s) == len(trace.jobs)
        assert math.isclose(result.work_s, trace.work_s)


def test_cost_ratio_is_at_least_one_and_waits_are_not_negative(results) -> None:
    for result in results.values():
        assert result.cost_ratio >= 1.0
        assert min(result.waits_s) >= 0.0
        f = result.figures()
        assert 0 <= f["p50_wait_boots"] <= f["p95_wait_boots"]
        assert f["makespan_s"] > 0


def test_always_on_is_billed_for_every_vm_over_the_whole_horizon(results) -> None:
    always = results["always_on"]
    assert always.horizon_s >= 7200.0
    expected = POOL.vms * always.horizon_s * POOL.slots / always.work_s
    assert math.isclose(always.cost_ratio, expected, rel_tol=1e-9)
    assert always.starts == 0


def test_same_seed_gives_the_same_figures_and_another_seed_does_not(results) -> None:
    again = run_scenario(Scenario(tiny(7), POOL), seed=7)
    assert figures({"t": again}) == figures({"t": results})
    other = run_scenario(Scenario(tiny(8), POOL), seed=8)
    assert figures({"t": other}) != figures({"t": results})


def test_trace_generators_are_seeded() -> None:
    for make in (burst, steady, heavy_tail):
        assert make(3, hours=6) == make(3, hours=6)
        assert make(3, hours=6) != make(4, hours=6)
    spreads = {sc.pool.boot_spread for sc in scenarios(3, quick=True, identical_boots=True)}
    assert spreads == {0.0}
    means = PoolParams(vms=4, boot_spread=0.0).boot_means(3)
    assert set(means.values()) == {90.0}
    batch = burst(3, hours=4)
    assert "burst" in batch.name
    assert 50 <= len(batch.jobs) <= 300
    assert len({job.arrival for job in batch.jobs}) == 1  # the whole collection at once


def test_project_starts_a_whole_batch_at_once_so_each_file_waits_one_boot() -> None:
    exact = PoolParams(vms=12, slots=1, boot_s=60.0, boot_spread=0.0, boot_jitter=0.0)
    jobs = tuple(Job(i, 50.0, 500.0 + i) for i in range(10))
    trace = Trace("exact_burst", jobs, 3600.0)
    project = simulate(trace, exact, ProjectController(), seed=1)
    assert all(math.isclose(w, 60.0) for w in project.waits_s)
    assert project.starts == 10
    assert project.figures()["p95_wait_boots"] == 1.0
    batch = simulate(trace, exact, BatchAutoscale(), seed=1)
    assert batch.wait_quantile(0.95) > project.wait_quantile(0.95)  # waits for its 5-min cycle


def test_project_without_the_rate_hint_keeps_the_invariants() -> None:
    result = simulate(tiny(7), POOL, ProjectController(rate_hint=False), seed=7)
    assert result.processed == len(tiny(7).jobs)
    assert result.cost_ratio >= 1.0 and min(result.waits_s) >= 0.0


def test_project_reuses_warm_vms_instead_of_booting_again() -> None:
    exact = PoolParams(vms=8, slots=1, boot_s=60.0, boot_spread=0.0, boot_jitter=0.0)
    # a file every 40 s, 100 s each: a VM that finishes is soon wanted again
    trace = Trace("stream", tuple(Job(i, 40.0 * i, 100.0) for i in range(20)), 1200.0)
    project = simulate(trace, exact, ProjectController(), seed=1)
    naive = simulate(trace, exact, SeedNaive(), seed=1)
    assert naive.starts == 20 and all(math.isclose(w, 60.0) for w in naive.waits_s)
    assert project.starts < 10
    assert sum(1 for w in project.waits_s if w == 0.0) >= 10
    assert project.billed_s < naive.billed_s


def test_project_lets_a_lone_file_go_cold_when_arrivals_are_rare() -> None:
    exact = PoolParams(vms=3, slots=1, boot_s=60.0, boot_spread=0.0, boot_jitter=0.0)
    trace = Trace("sparse", (Job(0, 0.0, 300.0), Job(1, 900.0, 300.0)), 2000.0)
    project = simulate(trace, exact, ProjectController(), seed=1)
    naive = simulate(trace, exact, SeedNaive(), seed=1)
    assert project.starts == 2
    assert math.isclose(project.billed_s, naive.billed_s)  # stopped right after each file


def test_the_simulated_pool_refuses_to_stop_a_busy_vm() -> None:
    class Reckless(ProjectController):
        name = "reckless"

        def on_event(self, pool: Pool, kind: str) -> None:
            super().on_event(pool, kind)
            for vm in pool.in_state("running"):
                if vm.busy:
                    pool.deallocate(vm.name)

    with pytest.raises(SimulationError, match="holds"):
        simulate(tiny(1), POOL, Reckless(), seed=1)


def test_a_policy_that_loses_work_is_an_error() -> None:
    class Idle(AlwaysOn):
        name = "idle"

        def setup(self, pool: Pool) -> None:
            return None

    with pytest.raises(SimulationError, match="never finished"):
        simulate(tiny(1), POOL, Idle(), seed=1)


def test_keda_keeps_replicas_for_its_stabilization_window(results) -> None:
    keda, project = results["keda"], results["project"]
    assert keda.billed_s > project.billed_s


def test_quantile_interpolates() -> None:
    assert quantile([1.0], 0.95) == 1.0
    assert quantile([0.0, 10.0], 0.5) == 5.0
    assert quantile(list(range(101)), 0.95) == pytest.approx(95.0)


def test_json_table_and_plot_outputs(results, tmp_path) -> None:
    document = figures({"tiny_burst": results})
    row = document["traces"]["tiny_burst"]["project"]
    assert set(row) == {"cost_ratio", "p50_wait_boots", "p95_wait_boots", "makespan_s",
                        "vm_starts_per_file"}
    json.dumps(document)
    table = render_table({"tiny_burst": results})
    assert "project" in table and "keda" in table and "cost ratio" in table
    assert isinstance(dominated_by(results), list)
    png = plot({"tiny_burst": results}, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_rejects_a_bad_seed(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--seed", "abc"])
    assert "invalid int value" in capsys.readouterr().err


def test_baselines_act_only_at_their_own_cadence() -> None:
    exact = PoolParams(vms=3, slots=1, boot_s=60.0, boot_spread=0.0, boot_jitter=0.0)
    trace = Trace("one_file", (Job(0, 5.0, 100.0),), 3600.0)
    waits = {c.name: simulate(trace, exact, c, seed=1).waits_s[0]
             for c in (ProjectController(), SeedNaive(), KedaScaler(), BatchAutoscale())}
    assert waits["project"] == 60.0 and waits["seed_naive"] == 60.0  # on the arrival event
    assert math.isclose(waits["keda"], 25.0 + 60.0)                   # next 30 s poll
    assert math.isclose(waits["batch_autoscale"], 295.0 + 60.0)       # next 5-minute evaluation
    keda = simulate(trace, exact, KedaScaler(), seed=1)
    # the replica stays for the 300 s stabilization window after the queue empties
    assert keda.billed_s >= 100.0 + 300.0
