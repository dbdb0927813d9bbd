"""The digital-twin benchmark's pieces that need no app run: its traces, the app's settings it
runs with, and its figures from a run's records."""
from __future__ import annotations

import pytest

from bench.sim import ControlPlane
from bench.traces import burst, steady
from bench.twin import (
    RealRun,
    app_env,
    measured_plane,
    real_result,
    twin_pool,
    twin_trace,
)
from shared.settings import Settings


def test_the_burst_slice_is_the_first_batch_cut_to_the_pool_and_compressed() -> None:
    full = burst(1)
    first = [job for job in full.jobs if job.arrival == full.jobs[0].arrival]
    trace = twin_trace("burst", 1, 30.0, 6, 150.0)
    assert len(trace.jobs) == 6 <= len(first)
    assert {job.arrival for job in trace.jobs} == {0.0}
    assert [job.duration for job in trace.jobs] == [job.duration / 30.0 for job in first[:6]]


def test_the_steady_slice_keeps_each_slot_as_loaded_as_the_full_pool() -> None:
    full = steady(1)
    trace = twin_trace("steady", 1, 30.0, 6, 150.0)
    kept = full.jobs[::8]  # 48 slots -> 6
    assert [(j.arrival, j.duration) for j in trace.jobs] == [
        (j.arrival / 30.0, j.duration / 30.0) for j in kept[:len(trace.jobs)]]
    assert trace.jobs[-1].arrival <= 150.0 < kept[len(trace.jobs)].arrival / 30.0


def test_the_app_runs_with_the_scaled_policy_and_pool_timings(tmp_path) -> None:  # noqa: ANN001
    env = app_env("UseDevelopmentStorage=true", tmp_path, 7999, 3, 2, 30.0)
    settings = Settings.from_env(env)
    assert settings.idle_cooldown_seconds == 4 and settings.boot_timeout_seconds == 20
    assert (settings.local_boot_seconds, settings.local_deallocate_seconds) == (3.0, 2.0)
    assert settings.scaler_schedule == "*/1 * * * * *"
    assert settings.pool_max_running == 3 and settings.vm_slots == 2
    # the app and its agents agree on when a claim is stale
    assert env["AGENT_CLAIM_STALE_SECONDS"] == str(settings.heartbeat_timeout_seconds)
    params = twin_pool(3, 2, 30.0, 3.5)
    assert (params.idle_cooldown_s, params.deallocate_s, params.boot_s) == (4, 2.0, 3.5)


def _run() -> tuple:
    trace = twin_trace("burst", 1, 30.0, 2, 150.0)
    run = RealRun(t0=100.0, end=400.0)
    for job in trace.jobs:
        run.uploaded[job.id] = 100.0 + 0.01 * job.id
        run.issued[job.id] = 100.5 + 0.5 * job.id  # 2 files/s after 0.5 s
        run.claimed[job.id] = 104.0 + 0.5 * job.id
        run.finished[job.id] = run.claimed[job.id] + job.duration + 0.2
        run.vm_of[job.id] = "vm01"
    run.intervals = {"vm01": [(100.2, run.finished[1] + 2.0)]}
    run.scaler_starts = [100.7]
    return trace, run


def test_the_real_figures_are_the_simulators_definitions_on_the_records() -> None:
    trace, run = _run()
    params = twin_pool(1, 2, 30.0, 4.0)
    result = real_result(trace, run, params)
    billed = run.intervals["vm01"][0][1] - 100.2
    assert result.billed_s == pytest.approx(billed)
    assert result.cost_ratio == pytest.approx(billed * 2 / trace.work_s)
    assert result.waits_s == pytest.approx((4.0, 4.49))
    assert result.figures()["p95_wait_boots"] == pytest.approx(round(4.4655 / 4.0, 4))


def test_the_control_plane_is_read_from_the_records() -> None:
    trace, run = _run()
    plane, reaction, detail = measured_plane(trace, run, 2)
    assert isinstance(plane, ControlPlane)
    assert (plane.dispatch_rate, plane.dispatch_latency_s, plane.poll_s,
            plane.job_overhead_s) == pytest.approx((2.0, 0.5, 0.0, 0.2))
    assert reaction == pytest.approx(0.2)
    assert detail["dispatch_rate_files_per_s"] == 2.0
    del run.claimed[1]
    with pytest.raises(RuntimeError, match="never processed"):
        real_result(trace, run, twin_pool(1, 2, 30.0, 4.0))
