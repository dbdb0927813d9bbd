"""`python -m bench.twin`: the running app against its simulation, on the same work.

The pool simulator (`bench/sim.py`) says what the policy costs and how long files wait; this
benchmark checks that the app behaves as simulated. It runs the real app (devhost, a private
Azurite, the local pool with a boot and a deallocation delay) on a time-compressed slice of the
simulator's `burst` and `steady` traces, and the simulator on exactly the same slice, and
prints both sets of figures.

- **Scale**: every time is divided by `--scale` (30: a 90 s boot takes 3 s, a 15 min file
  30 s, the 120 s idle cooldown 4 s, the 30 s scaler backstop 1 s; the app's settings are set
  from the scaled values).
- **Traces**: `burst` is the first batch of the simulator's burst trace, cut to the twin pool's
  slots (the full-size pool is sized for its largest batch, so a batch never queues; so is the
  twin's). `steady` keeps every k-th file of the simulator's steady trace, k = the full pool's
  slots / the twin's, so each slot sees the same load, over the first minutes.
- **Real figures**: billed VM-seconds from the local backend's own power records (start
  request to completed deallocation), each file's wait from its upload to its first claim (the
  claim table), and `Result` (bench/sim.py) computes `cost_ratio` and `p95_wait_boots` from
  them, so both sides use one definition.
- **Sim figures**: the same trace on a pool with the twin's measured boot time, given the
  control plane the run measured (dispatch rate and latency, the agent's polling delay, per-file
  overhead, the scaler's reaction delay; see `ControlPlane` and `ProjectController`). The ideal
  control plane's figures are printed beside them.
- **Dispatch-rate table**: the full-size burst trace (as `bench.policy` runs it) simulated with
  a finite dispatch rate, p95 wait in boots: what a measured control-plane rate costs a batch.

Writes `bench/results/twin.json`. Takes about 3-4 minutes per trace; `--dispatch-rate R` (one
or more) only prints the table for those rates.
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.project import ProjectController
from bench.sim import ARRIVAL, COMPLETE, ControlPlane, Result, simulate
from bench.traces import Job, PoolParams, Trace, burst, scenarios, steady

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
KEY = "twin-function-key"
FULL = PoolParams(vms=1)  # the simulator's timings at full size
FULL_SLOTS = {"burst": 320, "steady": 48}  # slots of the pools bench.policy runs them on
DISPATCH_RATES = (1.5, 5.0, 12.0, 20.0)
TRACES = ("burst", "steady")


# --- the work ----------------------------------------------------------------------------


def twin_trace(name: str, seed: int, scale: float, slots: int, window_s: float) -> Trace:
    """A time-compressed slice of the simulator's trace `name` for a pool of `slots` slots."""
    if name == "burst":
        full = burst(seed)
        first = min(job.arrival for job in full.jobs)
        batch = [job for job in full.jobs if job.arrival == first][:slots]
        jobs = tuple(Job(i, 0.0, job.duration / scale) for i, job in enumerate(batch))
        return Trace("burst", jobs, 0.0)
    if name == "steady":
        full = steady(seed)
        every = max(1, round(FULL_SLOTS["steady"] / slots))
        kept = [job for job in full.jobs[::every] if job.arrival / scale <= window_s]
        jobs = tuple(Job(i, job.arrival / scale, job.duration / scale)
                     for i, job in enumerate(kept))
        return Trace("steady", jobs, max(job.arrival for job in jobs))
    raise ValueError(f"unknown trace {name!r}")


def twin_pool(vms: int, slots: int, scale: float, boot_s: float) -> PoolParams:
    """The twin's pool as the simulator sees it: every VM boots in `boot_s` (the local backend
    has one boot delay for all), timings scaled."""
    return PoolParams(vms=vms, slots=slots, boot_s=boot_s, boot_spread=0.0, boot_jitter=0.0,
                      deallocate_s=FULL.deallocate_s / scale,
                      idle_cooldown_s=round(FULL.idle_cooldown_s / scale),
                      boot_timeout_s=FULL.boot_timeout_s / scale)


# --- the real run ------------------------------------------------------------------------


@dataclass
class RealRun:
    """What the app and its pool recorded during one run (epoch seconds)."""

    uploaded: dict[int, float] = field(default_factory=dict)   # trace job -> upload landed
    issued: dict[int, float] = field(default_factory=dict)     # -> work item issued
    claimed: dict[int, float] = field(default_factory=dict)    # -> first claim
    finished: dict[int, float] = field(default_factory=dict)   # -> that claim finished
    vm_of: dict[int, str] = field(default_factory=dict)
    intervals: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    launches: dict[str, list[float]] = field(default_factory=dict)  # agent process began
    boots: list[float] = field(default_factory=list)           # registry boot times
    scaler_starts: list[float] = field(default_factory=list)   # start requests
    t0: float = 0.0
    end: float = 0.0


def app_env(azurite_connection: str, state: Path, port: int, vms: int, slots: int,
            scale: float) -> dict[str, str]:
    """The app's settings for a twin run: the scaled policy timings, the local pool with the
    scaled boot and deallocation, agents running the sleeping action."""
    tick = max(1, round(30 / scale))
    stale = str(max(10, round(300 / scale)))  # the app and its agents agree when a claim is stale
    return {
        "AzureWebJobsStorage": azurite_connection, "TASKHUB_NAME": f"twin{uuid.uuid4().hex[:8]}",
        "CALLBACK_SIGNING_KEY": "twin-key", "POOL_BACKEND": "local",
        "POOL_VMS": f"vm01..vm{vms:02d}", "POOL_MAX_RUNNING": str(vms), "POOL_MIN_RUNNING": "0",
        "VM_SLOTS": str(slots),
        "IDLE_COOLDOWN_SECONDS": str(round(FULL.idle_cooldown_s / scale)),
        "BOOT_TIMEOUT_SECONDS": str(max(10, round(FULL.boot_timeout_s / scale))),
        "HEARTBEAT_TIMEOUT_SECONDS": stale, "AGENT_CLAIM_STALE_SECONDS": stale,
        "SCALER_SCHEDULE": f"*/{tick} * * * * *", "COLLECT_SCHEDULE": "0 0 0 1 1 *",
        "JOB_TIMEOUT_SECONDS": "600",
        "LOCAL_BOOT_SECONDS": f"{FULL.boot_s / scale:g}",
        "LOCAL_DEALLOCATE_SECONDS": f"{FULL.deallocate_s / scale:g}",
        "LOCAL_STOP_GRACE_SECONDS": "10",
        "LOCAL_STATE_DIR": str(state / "pool"), "LOCAL_AGENT_COMMAND": f"{sys.executable} -m agent",
        "LOCAL_AGENT_FUNCTION_KEY": KEY, "LOCAL_AGENT_API_BASE_URL": f"http://127.0.0.1:{port}",
        "DEVHOST_FUNCTION_KEY": KEY, "DEVHOST_MASTER_KEY": uuid.uuid4().hex,
        "DEVHOST_BLOB_POLL_SECONDS": "0.2",
        "AGENT_ACTIONS": json.dumps({"process": [
            sys.executable, str(ROOT / "bench" / "twin_action.py"), "{input}", "{output}"]}),
        "AGENT_WORK_DIR": str(state / "work"),
        "AGENT_POLL_MIN_SECONDS": f"{max(0.05, 1 / scale):g}",
        "AGENT_POLL_MAX_SECONDS": f"{30 / scale:g}",
        "AGENT_IDLE_SECONDS": f"{300 / scale:g}", "AGENT_HEARTBEAT_SECONDS": f"{30 / scale:g}",
        "PYTHONPATH": str(ROOT),
    }


def run_real(trace: Trace, vms: int, slots: int, scale: float, log: Any,
             keep: Path | None = None) -> RealRun:
    """Run the app on `trace` and collect its records; every VM cold at the start."""
    from devhost.process import DevHostProcess, free_port  # noqa: PLC0415 - a real run only
    from shared.pool.backends import make_backend  # noqa: PLC0415
    from shared.pool.backends.local import LocalBackend  # noqa: PLC0415
    from shared.services import Services  # noqa: PLC0415
    from shared.storage import ensure_resources  # noqa: PLC0415
    from tools.azurite import Azurite  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="bench-twin-") as tmp:
        state = Path(tmp)
        azurite = Azurite.start(state / "azurite")
        port = free_port()
        env = app_env(azurite.connection_string, state, port, vms, slots, scale)
        services = Services.from_env(env)
        ensure_resources(services.settings, services.connection)
        backend = make_backend(services.settings, env=env)
        assert isinstance(backend, LocalBackend)
        host = DevHostProcess(ROOT, env=env, port=port)
        run = RealRun()
        try:
            host.start(timeout=120)
            data = services.blobs.get_container_client(services.settings.data_container)
            names = {f"twin/{job.id:04d}.json": job.id for job in trace.jobs}
            run.t0 = time.time() + 2.0
            for job in sorted(trace.jobs, key=lambda j: (j.arrival, j.id)):
                time.sleep(max(0.0, run.t0 + job.arrival - time.time()))
                data.upload_blob(f"twin/{job.id:04d}.json",
                                 json.dumps({"seconds": job.duration}).encode(), overwrite=True)
                run.uploaded[job.id] = time.time()
            log(f"  {trace.name}: {len(trace.jobs)} files uploaded; waiting for the pool")
            limit = time.time() + max(j.duration for j in trace.jobs) + 120.0
            while time.time() < limit:
                time.sleep(1.0)
                done = [j for j in services.jobs.list(limit=10_000)
                        if j.status in ("succeeded", "failed")]
                if (len(done) >= len(trace.jobs)
                        and all(backend.power_state(vm) == "deallocated"
                                for vm in _members(services.settings.pool_vms))):
                    break
            run.end = time.time()
            _collect(run, services, backend, names)
        finally:
            host.stop()
            if keep is not None:  # agent logs and the power log, to look into a run
                shutil.copytree(state / "pool", keep / trace.name, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("work"))
                (keep / trace.name / "host.log").write_text(host.output())
            for vm in _members(services.settings.pool_vms):
                try:
                    backend.deallocate(vm)
                except Exception:  # noqa: BLE001, S112 - best effort cleanup of agent processes
                    continue
            azurite.stop()
    return run


def _members(pool_vms: str) -> list[str]:
    from shared.pool.members import parse_pool_vms  # noqa: PLC0415

    return parse_pool_vms(pool_vms)


def _epoch(value: Any) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value)


def _collect(run: RealRun, services: Any, backend: Any, names: dict[str, int]) -> None:
    jobs = {job.job_id: names[job.blob] for job in services.jobs.list(limit=10_000)
            if job.blob in names}
    for row in services.log.day(kind="work.issued", limit=100_000):
        if row["jobId"] in jobs and row["data"].get("attempt", 1) == 1:
            trace_id = jobs[row["jobId"]]
            at = datetime.fromisoformat(row["at"]).timestamp()
            run.issued[trace_id] = min(at, run.issued.get(trace_id, at))
    for claim in services.claims.table.list_entities():
        trace_id = jobs.get(claim["PartitionKey"])
        if trace_id is None or not claim.get("claimedAt") or not claim.get("vm"):
            continue
        at = _epoch(claim["claimedAt"])
        if trace_id not in run.claimed or at < run.claimed[trace_id]:
            run.claimed[trace_id] = at
            run.vm_of[trace_id] = claim["vm"]
            if claim.get("finishedAt"):
                run.finished[trace_id] = _epoch(claim["finishedAt"])
    run.intervals = backend.billed_intervals(until=run.end)
    for event in backend.power_events():
        if event["event"] == "launch":
            run.launches.setdefault(event["vm"], []).append(event["at"])
        elif event["event"] == "start":
            run.scaler_starts.append(event["at"])
    run.boots = [rec.boot_seconds for rec in services.registry.list() if rec.boot_seconds]


# --- figures -------------------------------------------------------------------------------


def real_result(trace: Trace, run: RealRun, params: PoolParams) -> Result:
    """The real run as a `Result`, so its figures are computed as the simulator's are."""
    missing = [job.id for job in trace.jobs if job.id not in run.claimed]
    if missing:
        raise RuntimeError(f"{trace.name}: files never processed: {missing}")
    waits = tuple(run.claimed[job.id] - run.uploaded[job.id] for job in trace.jobs)
    billed = sum(min(end, run.end) - max(start, run.t0)
                 for spans in run.intervals.values() for start, end in spans)
    ends = [run.finished.get(job.id, run.end) for job in trace.jobs]
    return Result(policy="project", trace=trace.name, slots=params.slots, billed_s=billed,
                  work_s=trace.work_s, waits_s=waits,
                  makespan_s=max(ends) - min(run.uploaded.values()),
                  horizon_s=run.end - run.t0, boot_ref_s=params.boot_s,
                  processed=len(run.claimed), starts=len(run.scaler_starts))


def measured_plane(trace: Trace, run: RealRun, slots: int) -> tuple[ControlPlane, float, dict]:
    """The control plane the run showed, and the scaler's reaction delay."""
    ids = [job.id for job in trace.jobs]
    delays = [run.issued[i] - run.uploaded[i] for i in ids if i in run.issued]
    by_upload = sorted(ids, key=lambda i: run.uploaded[i])
    # rate: files issued per second while the dispatcher had a backlog (a batch); a trickle
    # shows only the latency
    backlog = [i for i in by_upload if i in run.issued
               and run.uploaded[i] - run.uploaded[by_upload[0]] < 1.0]
    rate = float("inf")
    latency = min(delays) if delays else 0.0
    if len(backlog) > 1:
        span = max(run.issued[i] for i in backlog) - min(run.issued[i] for i in backlog)
        rate = (len(backlog) - 1) / span if span > 0 else float("inf")
    else:
        latency = statistics.median(delays)
    # polling: issued to claimed for files that met a running VM with a free slot
    poll = []
    for i in ids:
        vm = run.vm_of.get(i)
        if i not in run.issued or vm is None:
            continue
        up = [at for at in run.launches.get(vm, []) if at <= run.issued[i]]
        busy = sum(1 for j in ids if j != i and run.vm_of.get(j) == vm
                   and run.claimed[j] <= run.issued[i] < run.finished.get(j, run.end))
        if up and busy < slots and run.issued[i] - max(up) > 2.0:
            poll.append(run.claimed[i] - run.issued[i])
    overhead = [run.finished[i] - run.claimed[i] - job.duration
                for i, job in zip(ids, trace.jobs, strict=True) if i in run.finished]
    reaction = 0.0
    if run.scaler_starts and run.issued:
        first = min(run.issued.values())
        after = [at for at in run.scaler_starts if at >= first - 0.5]
        reaction = max(0.0, min(after) - first) if after else 0.0
    plane = ControlPlane(dispatch_rate=rate, dispatch_latency_s=max(0.0, latency),
                         poll_s=statistics.median(poll) if poll else 0.0,
                         job_overhead_s=max(0.0, statistics.median(overhead)) if overhead else 0.0)
    detail = {"dispatch_rate_files_per_s": None if rate == float("inf") else round(rate, 3),
              "dispatch_latency_s": round(plane.dispatch_latency_s, 3),
              "dispatch_delay_median_s": round(statistics.median(delays), 3) if delays else None,
              "poll_s": round(plane.poll_s, 3), "poll_samples": len(poll),
              "job_overhead_s": round(plane.job_overhead_s, 3),
              "scaler_reaction_s": round(reaction, 3)}
    return plane, reaction, detail


def sim_controller(scale: float, reaction_s: float) -> ProjectController:
    """The project's policy as the twin's app runs it: the scaled backstop, asked for a pass
    when work is issued and when a job finishes, `reaction_s` after it."""
    return ProjectController(tick_s=max(1, round(30 / scale)), reaction_s=reaction_s,
                             triggers=frozenset({ARRIVAL, COMPLETE}))


def timeline(trace: Trace, run: RealRun) -> dict[str, Any]:
    """The run's records, in seconds from the start of the trace."""
    def rel(value: float | None) -> float | None:
        return None if value is None else round(value - run.t0, 3)

    return {"files": [{"file": job.id, "processing_s": round(job.duration, 3),
                       "uploaded": rel(run.uploaded.get(job.id)),
                       "issued": rel(run.issued.get(job.id)),
                       "claimed": rel(run.claimed.get(job.id)),
                       "finished": rel(run.finished.get(job.id)), "vm": run.vm_of.get(job.id)}
                      for job in trace.jobs],
            "billed": {vm: [[rel(a), rel(b)] for a, b in spans]
                       for vm, spans in sorted(run.intervals.items())},
            "launches": {vm: [rel(a) for a in ats] for vm, ats in sorted(run.launches.items())},
            "end": rel(run.end)}


def figures(result: Result) -> dict[str, float]:
    f = result.figures()
    return {"cost_ratio": f["cost_ratio"], "p95_wait_boots": f["p95_wait_boots"],
            "p50_wait_boots": f["p50_wait_boots"], "billed_vm_s": round(result.billed_s, 2),
            "work_s": round(result.work_s, 2), "vm_starts": result.starts,
            "waits_s": [round(w, 3) for w in result.waits_s]}


def agreement(real: dict, sim: dict) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in ("cost_ratio", "p95_wait_boots"):
        out[key] = round(abs(sim[key] - real[key]) / real[key], 4) if real[key] else None
    return out


def dispatch_table(seed: int, rates: tuple[float, ...]) -> dict[str, float]:
    """p95 wait in boots on the full-size burst trace at each dispatch rate (and unlimited)."""
    scenario = scenarios(seed)[0]
    out = {}
    for rate in (float("inf"), *rates):
        result = simulate(scenario.trace, scenario.pool, ProjectController(), seed,
                          plane=ControlPlane(dispatch_rate=rate))
        out["unlimited" if rate == float("inf") else f"{rate:g}"] = round(
            result.wait_quantile(0.95) / result.boot_ref_s, 4)
    return out


def run_trace(name: str, args: argparse.Namespace, log: Any) -> dict[str, Any]:
    slots = args.vms * args.slots
    trace = twin_trace(name, args.seed, args.scale, slots, args.window)
    log(f"{name}: {len(trace.jobs)} files, work {trace.work_s:.0f} s, "
        f"{args.vms} VMs x {args.slots} slots")
    run = run_real(trace, args.vms, args.slots, args.scale, log, args.keep)
    boot = statistics.mean(run.boots) if run.boots else FULL.boot_s / args.scale
    params = twin_pool(args.vms, args.slots, args.scale, boot)
    real = figures(real_result(trace, run, params))
    plane, reaction, measured = measured_plane(trace, run, args.slots)
    measured["boot_s"] = round(boot, 3)
    sim = figures(simulate(trace, params, sim_controller(args.scale, reaction), args.seed,
                           plane=plane))
    tick = max(1, round(30 / args.scale))
    ideal = figures(simulate(trace, params, ProjectController(tick_s=tick), args.seed))
    return {"files": len(trace.jobs), "vms": args.vms, "slots": args.slots,
            "real": real, "sim": sim, "sim_ideal_control_plane": ideal,
            "measured": measured, "relative_difference": agreement(real, sim),
            "timeline": timeline(trace, run)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.twin", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trace", choices=(*TRACES, "all"), default="all")
    parser.add_argument("--scale", type=float, default=30.0, help="time compression factor")
    parser.add_argument("--vms", type=int, default=3)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--window", type=float, default=150.0,
                        help="steady: scaled seconds of arrivals kept")
    parser.add_argument("--dispatch-rate", type=float, action="append", metavar="FILES_PER_S",
                        help="only simulate the full burst trace at this dispatch rate "
                             "(repeatable) and print its p95 wait in boots")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", type=Path, default=None,
                        help="copy each run's agent logs and power log into this folder")
    args = parser.parse_args(argv)
    # a stopped benchmark still stops its host, agents and Azurite (the `finally` blocks)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    def log(text: str) -> None:
        print(text, flush=True)

    if args.dispatch_rate:
        for rate, p95 in dispatch_table(args.seed, tuple(args.dispatch_rate)).items():
            log(f"burst (full), dispatch rate {rate} files/s: p95 wait {p95:.2f} boots")
        return 0
    names = TRACES if args.trace == "all" else (args.trace,)
    entries = {}
    for name in names:
        entry = entries[name] = run_trace(name, args, log)
        for side in ("real", "sim", "sim_ideal_control_plane"):
            f = entry[side]
            log(f"  {side:>24}: cost_ratio {f['cost_ratio']:.3f}, p95 wait "
                f"{f['p95_wait_boots']:.2f} boots, p50 {f['p50_wait_boots']:.2f}, "
                f"billed {f['billed_vm_s']:.1f} VM-s, starts {f['vm_starts']}")
        log(f"  measured: {entry['measured']}")
        log(f"  sim vs real: {entry['relative_difference']}")
    # one trace at a time keeps the other traces' figures from an earlier run
    path = args.out / "twin.json"
    document = json.loads(path.read_text()) if path.exists() else {}
    document["traces"] = {**document.get("traces", {}), **entries}
    document["scale"] = {"factor": args.scale, "boot_s": FULL.boot_s / args.scale,
                         "deallocate_s": FULL.deallocate_s / args.scale,
                         "idle_cooldown_s": round(FULL.idle_cooldown_s / args.scale),
                         "scaler_tick_s": max(1, round(30 / args.scale)),
                         "vms": args.vms, "slots": args.slots, "seed": args.seed,
                         "steady_window_s": args.window}
    table = dispatch_table(args.seed, DISPATCH_RATES)
    document["dispatch_rate_p95_wait_boots"] = table
    for rate, p95 in table.items():
        log(f"burst (full), dispatch rate {rate} files/s: p95 wait {p95:.2f} boots")
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    log(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
