"""A discrete-event simulation of the VM pool, to measure what a scaling policy costs.

Billing follows Azure's: a VM is billed per second from the start request until its
deallocation completes. Spot members bill at `spot_price` per second and can be taken back:
each allocated spot VM is evicted independently (a Poisson process, `eviction_rate_per_h` per
VM-hour), and pool-wide bursts (`burst_rate_per_h`) evict `burst_fraction` of them at once and
refuse spot starts for `burst_outage_s`. An evicted VM hands its work back at the Preempt
notice (the work goes back to the front of the queue; what it had done is lost) and is
deallocated by Azure `notice_s` later.

Work is pulled from one shared queue by running VMs with a free slot (the app's model), except
for controllers that push work to a VM's own queue (the seed's). A controller is called on
every event (arrival, completion, VM ready, VM deallocated) and, if it has one, on its own
periodic tick; it acts through `Pool.start`, `Pool.deallocate` and `Pool.drain`, which refuse
anything a real pool would refuse (stopping a busy VM, starting one that is not deallocated),
so a wrong policy fails loudly instead of producing good figures.

The running app has a control plane the pool waits for; `ControlPlane` models it when asked (its
defaults are the ideal one, and leave every figure as it was): files become work items no
faster than `dispatch_rate` per second and `dispatch_latency_s` after their upload (the blob
trigger, the orchestration, the queue), a free slot takes queued work `poll_s` after it could
(the agent polls the queue), and a file holds its slot `job_overhead_s` longer than its
processing (download, starting the action, upload, reporting). A file's wait is still counted
from its upload, and the cost ratio's work is still the processing alone.
"""
from __future__ import annotations

import heapq
import math
import random
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from bench.traces import Job, PoolParams, Trace
from shared.contracts import VmPriority, VmState

# The pool's VM states, as the plain strings the policy reads.
DEALLOCATED, STARTING, RUNNING = (VmState.DEALLOCATED.value, VmState.STARTING.value,
                                  VmState.RUNNING.value)
DRAINING, DEALLOCATING, FAILED = (VmState.DRAINING.value, VmState.DEALLOCATING.value,
                                  VmState.FAILED.value)
EVICTED = VmState.EVICTED.value
ALLOCATED = (STARTING, RUNNING, DRAINING, DEALLOCATING)
REGULAR, SPOT = VmPriority.REGULAR.value, VmPriority.SPOT.value

ARRIVAL, COMPLETE, READY, GONE, TICK = "arrival", "complete", "ready", "deallocated", "tick"
EVICT, BURST, RECLAIMED = "evict", "burst", "reclaimed"
REACT = "react"  # a controller's own delayed reaction to an earlier event
UPLOAD = "upload"  # a file's upload ahead of its work item (non-ideal control plane only)
# same-instant event order (an upload counts before the work item it becomes)
_ORDER = {UPLOAD: -1, COMPLETE: 0, GONE: 1, RECLAIMED: 2, EVICT: 3, BURST: 4, READY: 5,
          ARRIVAL: 6, TICK: 7, REACT: 8}

EXTRA_S = 7 * 24 * 3600.0  # how long past the trace a simulation may run before it is an error


class SimulationError(RuntimeError):
    """The simulated pool was asked to do something impossible, or work was lost."""


class StartRefused(RuntimeError):
    """A spot start refused for lack of capacity (Azure: SkuNotAvailable, AllocationFailed...).
    The VM is left `evicted`, as the scaler records it."""


@dataclass(frozen=True)
class ControlPlane:
    """What lies between a file's upload and its processing in the running app."""

    dispatch_rate: float = math.inf  # files per second turned into work items (one at a time)
    dispatch_latency_s: float = 0.0  # upload -> work item issued for a file that meets no queue
    poll_s: float = 0.0              # a free slot takes queued work this long after it could
    job_overhead_s: float = 0.0      # a file holds its slot this much longer than its processing

    def __post_init__(self) -> None:
        if not self.dispatch_rate > 0:
            raise ValueError(f"dispatch_rate must be positive, got {self.dispatch_rate}")
        if min(self.dispatch_latency_s, self.poll_s, self.job_overhead_s) < 0:
            raise ValueError("dispatch_latency_s, poll_s and job_overhead_s must not be negative")

    @property
    def ideal(self) -> bool:
        return self == ControlPlane()

    def issued_at(self, arrivals: list[float]) -> list[float]:
        """When each file (in upload order) becomes a work item: a FIFO dispatcher that takes
        `1 / dispatch_rate` seconds per file, after the latency."""
        gap = 0.0 if math.isinf(self.dispatch_rate) else 1.0 / self.dispatch_rate
        out: list[float] = []
        free = -math.inf
        for at in arrivals:
            issued = max(at + self.dispatch_latency_s, free)
            out.append(issued)
            free = issued + gap
        return out


@dataclass
class SimVm:
    name: str
    slots: int
    boot_mean: float
    state: str = DEALLOCATED
    state_since: float = 0.0
    busy: int = 0
    idle_since: float | None = None
    billed_s: float = 0.0
    billed_from: float | None = None
    generation: int = 0  # invalidates a pending READY after the VM was stopped while booting
    boots: int = 0
    own_queue: deque[int] = field(default_factory=deque)  # push model only
    priority: str = REGULAR
    price: float = 1.0  # per billed second, on-demand = 1
    evictions: int = 0
    money: float = 0.0  # billed seconds x price

    @property
    def free(self) -> int:
        return self.slots - self.busy


class Controller(Protocol):
    """A scaling policy under test."""

    name: str
    tick_s: float | None  # None: called on events only
    pull: bool            # True: running VMs pull from the shared queue

    def setup(self, pool: Pool) -> None: ...
    def on_event(self, pool: Pool, kind: str) -> None: ...
    def on_tick(self, pool: Pool) -> None: ...


class Pool:
    """The simulated VMs, the shared queue and the clock, as a controller sees them."""

    def __init__(self, trace: Trace, params: PoolParams, seed: int,
                 plane: ControlPlane | None = None) -> None:
        self.params = params
        self.plane = plane or ControlPlane()
        self.uploaded = 0  # files uploaded so far / work items issued so far (`pending`)
        self.issued = 0
        self.jobs = {job.id: job for job in trace.jobs}
        means = params.boot_means(seed)
        self.vms = {name: SimVm(name, params.slots, means[name]) for name in params.names()}
        for name in params.spot_names():
            self.vms[name] = SimVm(name, params.slots, means[name], priority=SPOT,
                                   price=params.spot_price)
        self.order = sorted(self.vms)
        self.spot_refused_until = -math.inf
        self.evicted_work_s = 0.0  # processing lost to evictions
        self.queue: deque[int] = deque()
        self.now = 0.0
        self.done_at: dict[int, float] = {}
        self.running_on: dict[int, str] = {}
        self._events: list[tuple[float, int, int, str, object]] = []
        self._seq = 0
        self._seed = seed
        self._boot_rngs: dict[str, random.Random] = {}
        self._evict_rng = random.Random(f"evict-{seed}")
        self._burst_rng = random.Random(f"burst-{seed}")  # same bursts at every eviction rate
        self.attempt_started: dict[int, float] = {}  # job -> start of its current attempt
        self.first_started: dict[int, float] = {}
        self.lost_s: dict[int, float] = {}  # job -> processing lost to evictions
        if params.burst_rate_per_h > 0 and params.spot_vms:
            self._next_burst()

    # --- what controllers may read ---------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return len(self.running_on)

    @property
    def pending(self) -> int:
        """Files uploaded that are not work items yet (0 with an ideal control plane)."""
        return 0 if self.plane.ideal else max(0, self.uploaded - self.issued)

    def in_state(self, *states: str) -> list[SimVm]:
        return [self.vms[n] for n in self.order if self.vms[n].state in states]

    # --- what controllers may do ------------------------------------------------------------
    def start(self, name: str) -> None:
        vm = self.vms[name]
        if vm.state not in (DEALLOCATED, EVICTED):
            raise SimulationError(f"start {name}: it is {vm.state}, not deallocated")
        if vm.priority == SPOT and self.now < self.spot_refused_until:
            self._set(vm, EVICTED)
            raise StartRefused(f"start {name}: no spot capacity")
        self._stop_billing(vm)  # evicted moments ago: the notice's seconds are billed already
        self._set(vm, STARTING)
        vm.billed_from = self.now
        vm.generation += 1
        vm.boots += 1
        self.schedule(self.now + self._boot_time(vm), READY, (name, vm.generation))
        if vm.priority == SPOT and self.params.eviction_rate_per_h > 0:
            gap = self._evict_rng.expovariate(self.params.eviction_rate_per_h / 3600.0)
            self.schedule(self.now + gap, EVICT, (name, vm.generation))

    def deallocate(self, name: str) -> None:
        vm = self.vms[name]
        if vm.busy:
            raise SimulationError(f"deallocate {name}: it holds {vm.busy} running job(s)")
        if vm.state not in (STARTING, RUNNING, DRAINING):
            raise SimulationError(f"deallocate {name}: it is {vm.state}")
        vm.generation += 1
        vm.idle_since = None
        self._set(vm, DEALLOCATING)
        self.schedule(self.now + self.params.deallocate_s, GONE, name)

    def drain(self, name: str) -> None:
        """No new work for this VM; it is deallocated as soon as it is idle."""
        vm = self.vms[name]
        if vm.state not in (RUNNING, STARTING):
            raise SimulationError(f"drain {name}: it is {vm.state}")
        self._set(vm, DRAINING)
        if vm.busy == 0:
            self.deallocate(name)

    def mark_failed(self, name: str) -> None:
        vm = self.vms[name]
        if vm.state != STARTING:
            raise SimulationError(f"mark_failed {name}: it is {vm.state}, not starting")
        vm.generation += 1
        self._set(vm, FAILED)
        self._stop_billing(vm)

    def run_always_on(self) -> None:
        """Every VM running from time 0 (an always-on pool needs no boot)."""
        for vm in self.vms.values():
            self._set(vm, RUNNING)
            vm.billed_from = 0.0
            vm.idle_since = 0.0

    # --- machinery --------------------------------------------------------------------------
    def schedule(self, at: float, kind: str, data: object) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at, _ORDER[kind], self._seq, kind, data))

    def _set(self, vm: SimVm, state: str) -> None:
        vm.state = state
        vm.state_since = self.now

    def _stop_billing(self, vm: SimVm) -> None:
        if vm.billed_from is not None:
            vm.billed_s += self.now - vm.billed_from
            vm.money += (self.now - vm.billed_from) * vm.price
            vm.billed_from = None

    def _next_burst(self) -> None:
        gap = self._burst_rng.expovariate(self.params.burst_rate_per_h / 3600.0)
        self.schedule(self.now + gap, BURST, None)

    def evict(self, vm: SimVm) -> None:
        """The Preempt notice: work goes back to the queue at once, Azure deallocates the VM
        after the notice. The VM reads `evicted` from now on."""
        vm.generation += 1
        vm.evictions += 1
        for job_id in [j for j, name in self.running_on.items() if name == vm.name]:
            del self.running_on[job_id]
            lost = max(0.0, self.now - self.attempt_started.pop(job_id))
            self.evicted_work_s += lost
            self.lost_s[job_id] = self.lost_s.get(job_id, 0.0) + lost
            self.queue.appendleft(job_id)
        vm.busy = 0
        vm.idle_since = None
        self._set(vm, EVICTED)
        self.schedule(self.now + self.params.notice_s, RECLAIMED, (vm.name, vm.generation))

    def _boot_time(self, vm: SimVm) -> float:
        rng = self._boot_rngs.setdefault(vm.name, random.Random(f"{self._seed}-{vm.name}"))
        return vm.boot_mean * rng.lognormvariate(0.0, self.params.boot_jitter)

    def _begin(self, job_id: int, vm: SimVm) -> None:
        if job_id in self.running_on or job_id in self.done_at:
            raise SimulationError(f"job {job_id} started twice")
        if vm.busy >= vm.slots or vm.state != RUNNING:
            raise SimulationError(f"job {job_id} on {vm.name}: no free slot ({vm.state})")
        vm.busy += 1
        vm.idle_since = None
        # The slot is taken; its agent finds the item at its next poll. A VM that has just come
        # up polls at once (its first look at the queue is part of its boot).
        fresh = vm.state_since == self.now and vm.boots > 0
        began = self.now + (0.0 if fresh else self.plane.poll_s)
        self.first_started.setdefault(job_id, began)
        self.attempt_started[job_id] = began
        self.running_on[job_id] = vm.name
        self.schedule(began + self.jobs[job_id].duration + self.plane.job_overhead_s, COMPLETE,
                      (job_id, began))

    def dispatch(self, pull: bool) -> None:
        """Running VMs take work: their own queue first, then (pull model) the shared one,
        least-loaded VM first (the seed's preference), ties by name."""
        for name in self.order:
            vm = self.vms[name]
            while vm.state == RUNNING and vm.free and vm.own_queue:
                self._begin(vm.own_queue.popleft(), vm)
        if not (pull and self.queue):
            return
        ready = [self.vms[n] for n in self.order
                 if self.vms[n].state == RUNNING and self.vms[n].free]
        while self.queue and ready:
            vm = min(ready, key=lambda v: v.busy)
            self._begin(self.queue.popleft(), vm)
            if not vm.free:
                ready.remove(vm)

    def handle(self, kind: str, data: object) -> None:
        if kind == ARRIVAL:
            assert isinstance(data, int)
            self.issued += 1
            self.queue.append(data)
        elif kind == COMPLETE:
            job_id, began = data  # type: ignore[misc]
            if self.attempt_started.get(job_id) != began:
                return  # an attempt lost to an eviction
            del self.attempt_started[job_id]
            vm = self.vms[self.running_on.pop(job_id)]
            vm.busy -= 1
            self.done_at[job_id] = self.now
            if vm.busy == 0:
                vm.idle_since = self.now
                if vm.state == DRAINING:
                    self.deallocate(vm.name)
        elif kind == READY:
            name, generation = data  # type: ignore[misc]
            vm = self.vms[name]
            if vm.generation == generation and vm.state == STARTING:
                self._set(vm, RUNNING)
                vm.idle_since = self.now
        elif kind == GONE:
            assert isinstance(data, str)
            vm = self.vms[data]
            self._set(vm, DEALLOCATED)
            self._stop_billing(vm)
        elif kind == EVICT:
            name, generation = data  # type: ignore[misc]
            vm = self.vms[name]
            if vm.generation == generation and vm.state in (STARTING, RUNNING, DRAINING):
                self.evict(vm)
        elif kind == BURST:
            hit = [vm for vm in self.in_state(STARTING, RUNNING, DRAINING) if vm.priority == SPOT]
            self._burst_rng.shuffle(hit)
            for vm in hit[: math.ceil(len(hit) * self.params.burst_fraction)]:
                self.evict(vm)
            self.spot_refused_until = self.now + self.params.burst_outage_s
            self._next_burst()
        elif kind == RECLAIMED:
            name, generation = data  # type: ignore[misc]
            vm = self.vms[name]
            if vm.generation == generation:
                self._stop_billing(vm)


@dataclass(frozen=True)
class Result:
    """What one policy did on one trace."""

    policy: str
    trace: str
    slots: int
    billed_s: float        # VM-seconds billed
    work_s: float          # processing seconds
    waits_s: tuple[float, ...]
    makespan_s: float
    horizon_s: float       # when the simulation ended (always-on is billed until then)
    boot_ref_s: float      # the pool's typical boot time, the unit of the wait figures
    processed: int
    starts: int
    money: float = 0.0        # billed seconds x price (on-demand = 1); equals billed_s without spot
    billed_spot_s: float = 0.0
    evictions: int = 0
    lost_work_s: float = 0.0  # processing thrown away by evictions

    @property
    def cost_ratio(self) -> float:
        """Billed slot-seconds per processing second: 1.0 means no slot was ever paid idle.
        A VM with `slots` slots costs `slots` slot-seconds per second."""
        return self.billed_s * self.slots / self.work_s

    @property
    def money_ratio(self) -> float:
        """Money per processing second, in on-demand slot-seconds: an on-demand-only pool's
        money ratio is its cost ratio."""
        return self.money * self.slots / self.work_s

    def wait_quantile(self, q: float) -> float:
        return quantile(self.waits_s, q)

    def figures(self) -> dict[str, float]:
        return {
            "cost_ratio": round(self.cost_ratio, 4),
            "p50_wait_boots": round(self.wait_quantile(0.50) / self.boot_ref_s, 4),
            "p95_wait_boots": round(self.wait_quantile(0.95) / self.boot_ref_s, 4),
            "makespan_s": round(self.makespan_s, 1),
            "vm_starts_per_file": round(self.starts / max(1, self.processed), 4),
        }


def quantile(values: tuple[float, ...] | list[float], q: float) -> float:
    """Linear-interpolation quantile (the usual 'inclusive' definition)."""
    if not values:
        raise ValueError("no values")
    if len(values) == 1:
        return float(values[0])
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    index = round(q * 100)
    if index <= 0:
        return float(min(values))
    if index >= 100:
        return float(max(values))
    return cuts[index - 1]


def simulate(trace: Trace, params: PoolParams, controller: Controller, seed: int = 0,
             plane: ControlPlane | None = None) -> Result:
    """Run one controller over one trace; raises SimulationError if work is lost. `ARRIVAL`
    is the work item entering the queue: the file's upload, unless `plane` delays it."""
    if not trace.jobs:
        raise SimulationError(f"trace {trace.name!r} has no jobs")
    pool = Pool(trace, params, seed, plane)
    if pool.plane.ideal:
        for job in trace.jobs:
            pool.schedule(job.arrival, ARRIVAL, job.id)
    else:
        ordered = sorted(trace.jobs, key=lambda job: (job.arrival, job.id))
        issued = pool.plane.issued_at([job.arrival for job in ordered])
        for job, at in zip(ordered, issued, strict=True):
            pool.schedule(job.arrival, UPLOAD, job.id)
            pool.schedule(at, ARRIVAL, job.id)
    if controller.tick_s:
        pool.schedule(controller.tick_s, TICK, None)
    controller.setup(pool)
    limit = trace.horizon_s + EXTRA_S
    total = len(trace.jobs)
    while pool._events:
        at, _, _, kind, data = heapq.heappop(pool._events)
        if at > limit:
            break
        pool.now = at
        if kind == UPLOAD:
            pool.uploaded += 1
            continue
        pool.handle(kind, data)
        pool.dispatch(controller.pull)
        if kind == TICK:
            controller.on_tick(pool)
            if controller.tick_s:
                pool.schedule(at + controller.tick_s, TICK, None)
        elif kind == REACT:
            controller.on_react(pool)  # type: ignore[attr-defined] - only who schedules it
        else:
            controller.on_event(pool, kind)
        pool.dispatch(controller.pull)
        if len(pool.done_at) == total and not pool.in_state(STARTING, RUNNING, DRAINING,
                                                            DEALLOCATING):
            break
    if set(pool.done_at) != set(pool.jobs) or pool.running_on or pool.queue:
        raise SimulationError(
            f"{controller.name} on {trace.name}: {total - len(pool.done_at)} of {total} jobs "
            "never finished")
    end = max(trace.horizon_s, pool.now)
    pool.now = end
    for vm in pool.vms.values():
        pool._stop_billing(vm)
    return _result(trace, params, controller, pool, end)


def _result(trace: Trace, params: PoolParams, controller: Controller, pool: Pool,
            end: float) -> Result:
    jobs: list[Job] = list(trace.jobs)
    # A file waits while it makes no progress that counts: before its first start, and for the
    # attempts an eviction threw away. Without evictions this is first start - arrival.
    waits = tuple(pool.first_started[j.id] - j.arrival + pool.lost_s.get(j.id, 0.0)
                  for j in jobs)
    first = min(j.arrival for j in jobs)
    return Result(
        policy=controller.name, trace=trace.name, slots=params.slots,
        billed_s=sum(vm.billed_s for vm in pool.vms.values()),
        work_s=sum(j.duration for j in jobs), waits_s=waits,
        makespan_s=max(pool.done_at.values()) - first, horizon_s=end,
        boot_ref_s=params.boot_s, processed=len(pool.done_at),
        starts=sum(vm.boots for vm in pool.vms.values()),
        money=sum(vm.money for vm in pool.vms.values()),
        billed_spot_s=sum(vm.billed_s for vm in pool.vms.values() if vm.priority == SPOT),
        evictions=sum(vm.evictions for vm in pool.vms.values()),
        lost_work_s=pool.evicted_work_s)


def ceil_div(a: float, b: int) -> int:
    return max(0, math.ceil(a / b))
