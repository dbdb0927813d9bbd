"""The policies the project's is measured against, each with its own design and cadence.

- `always_on`: every VM runs all the time (no boot waits, the cost ceiling).
- `seed_naive`: the seed article's selector. Each new file starts the first VM not running (in
  table order) and is pushed to it; when all are on, the file is pushed to the least-loaded VM.
  A VM asks to be stopped as soon as it has no file of its own left (the seed stops it after
  each file; files already pushed to it are finished first, and a VM that was told to stop with
  files pushed to it is started again, else those files would be stranded).
- `batch_autoscale`: Azure Batch's documented autoscale formula, evaluated every 5 minutes
  (Batch's minimum interval): target nodes = avg($PendingTasks) over the last 180 s of 30 s
  samples, where $PendingTasks = active + running tasks; removal with `taskcompletion` (idle nodes
  go first, busy ones finish their task before leaving).
- `keda`: a KEDA queue scaler: polls every 30 s, desired replicas = ceil(queue length / slots)
  with queueLengthStrategy "all" (messages being processed stay in the queue, invisible);
  scale-up at once, scale-down to the highest desired count of the last 300 s (the HPA's
  default stabilization window, equal to KEDA's default cooldownPeriod before scaling to zero);
  only idle replicas are removed (a ScaledJob lets running jobs finish).
- `batch_mix` (bench/spot.py only): `batch_autoscale` on a pool of dedicated and low-priority
  (spot) nodes, a fixed share of the target on each.

None of them reacts to events except the seed's, which is event-driven by design.
"""
from __future__ import annotations

import math
from collections import deque

from bench.sim import (
    ARRIVAL,
    COMPLETE,
    DEALLOCATED,
    EVICTED,
    GONE,
    REGULAR,
    RUNNING,
    SPOT,
    STARTING,
    Pool,
    SimVm,
    StartRefused,
    ceil_div,
)


class AlwaysOn:
    name = "always_on"
    tick_s: float | None = None
    pull = True

    def setup(self, pool: Pool) -> None:
        pool.run_always_on()

    def on_event(self, pool: Pool, kind: str) -> None:
        return None

    def on_tick(self, pool: Pool) -> None:
        return None


class SeedNaive:
    name = "seed_naive"
    tick_s: float | None = None
    pull = False

    def setup(self, pool: Pool) -> None:
        return None

    def on_event(self, pool: Pool, kind: str) -> None:
        if kind == ARRIVAL:
            while pool.queue:
                self._place(pool, pool.queue.popleft())
        elif kind == COMPLETE:
            for vm in pool.in_state(RUNNING):
                if vm.busy == 0 and not vm.own_queue:
                    pool.deallocate(vm.name)
        elif kind == GONE:
            for vm in pool.in_state(DEALLOCATED):
                if vm.own_queue:
                    pool.start(vm.name)

    def on_tick(self, pool: Pool) -> None:
        return None

    @staticmethod
    def _place(pool: Pool, job_id: int) -> None:
        stopped = pool.in_state(DEALLOCATED)
        if stopped:
            vm = stopped[0]
            pool.start(vm.name)
        else:
            on = pool.in_state(STARTING, RUNNING) or [
                v for v in pool.vms.values() if v.state != "failed"]
            vm = min(on, key=lambda v: (v.busy + len(v.own_queue), v.name))
        vm.own_queue.append(job_id)


def _scale_to(pool: Pool, target: int, drain_busy: bool, priority: str = REGULAR) -> None:
    """Bring the count of VMs of one priority that are on (starting + running) to `target`:
    start the first stopped VMs in name order (no baseline knows boot times), remove idle ones
    first. A refused spot start is left for the next evaluation (Batch retries; it does not
    fall back to dedicated nodes)."""
    on = [vm for vm in pool.in_state(STARTING, RUNNING) if vm.priority == priority]
    if target > len(on):
        stopped = [vm for vm in pool.in_state(DEALLOCATED, EVICTED) if vm.priority == priority]
        for vm in stopped[: target - len(on)]:
            try:
                pool.start(vm.name)
            except StartRefused:
                break
        return
    surplus = len(on) - target
    idle: list[SimVm] = [vm for vm in on if vm.busy == 0]
    idle.sort(key=lambda vm: (vm.state == RUNNING, vm.name))  # still-booting ones go first
    for vm in idle[:surplus]:
        pool.deallocate(vm.name)
    surplus -= min(surplus, len(idle))
    if drain_busy and surplus:
        busy = sorted((vm for vm in on if vm.busy), key=lambda vm: (vm.busy, vm.name))
        for vm in busy[:surplus]:
            pool.drain(vm.name)


class BatchAutoscale:
    name = "batch_autoscale"
    tick_s: float | None = 30.0  # the service samples its metrics every 30 s
    pull = True
    EVAL_S = 300.0
    WINDOW_S = 180.0

    def __init__(self) -> None:
        self.samples: deque[tuple[float, int]] = deque()

    def setup(self, pool: Pool) -> None:
        return None

    def on_event(self, pool: Pool, kind: str) -> None:
        return None

    def on_tick(self, pool: Pool) -> None:
        now = pool.now
        self.samples.append((now, len(pool.queue) + pool.in_flight))
        while self.samples and self.samples[0][0] < now - self.WINDOW_S:
            self.samples.popleft()
        if round(now) % round(self.EVAL_S):
            return
        pending = sum(v for _, v in self.samples) / len(self.samples)
        target = min(pool.params.vms, ceil_div(pending, pool.params.slots))
        _scale_to(pool, target, drain_busy=True)


class KedaScaler:
    name = "keda"
    tick_s: float | None = 30.0  # pollingInterval
    pull = True
    WINDOW_S = 300.0             # HPA scale-down stabilization = cooldownPeriod

    def __init__(self) -> None:
        self.desired: deque[tuple[float, int]] = deque()

    def setup(self, pool: Pool) -> None:
        return None

    def on_event(self, pool: Pool, kind: str) -> None:
        return None

    def on_tick(self, pool: Pool) -> None:
        now = pool.now
        length = len(pool.queue) + pool.in_flight
        self.desired.append((now, min(pool.params.vms, ceil_div(length, pool.params.slots))))
        while self.desired and self.desired[0][0] < now - self.WINDOW_S:
            self.desired.popleft()
        _scale_to(pool, max(d for _, d in self.desired), drain_busy=False)


class BatchMix(BatchAutoscale):
    """Azure Batch with low-priority (spot) nodes: the same formula's target split into
    `$TargetDedicatedNodes` (a fixed share) and `$TargetLowPriorityNodes` (the rest). Batch
    re-allocates preempted low-priority nodes towards the target by itself and never moves
    their share to dedicated nodes."""

    name = "batch_mix"
    DEDICATED_SHARE = 0.2

    def on_tick(self, pool: Pool) -> None:
        now = pool.now
        self.samples.append((now, len(pool.queue) + pool.in_flight))
        while self.samples and self.samples[0][0] < now - self.WINDOW_S:
            self.samples.popleft()
        if round(now) % round(self.EVAL_S):
            return
        pending = sum(v for _, v in self.samples) / len(self.samples)
        target = ceil_div(pending, pool.params.slots)
        dedicated = min(pool.params.vms, math.ceil(target * self.DEDICATED_SHARE))
        spot = min(pool.params.spot_vms, target - dedicated)
        _scale_to(pool, dedicated, drain_busy=True, priority=REGULAR)
        _scale_to(pool, spot, drain_busy=True, priority=SPOT)


def baselines() -> list[type]:
    return [AlwaysOn, SeedNaive, BatchAutoscale, KedaScaler]

