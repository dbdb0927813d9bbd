"""Seedable workloads for the pool simulator: when each file arrives and how long it takes.

Three shapes the pool meets in practice: a scheduled collection that drops a whole batch at
once (`burst`), files dropped one by one by other systems (`steady`), and the same with
heavy-tailed processing times where a few files take hours (`heavy_tail`). Each trace comes with
the pool it runs on, so every policy is measured against the same VMs.
"""
from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Job:
    """One file: when it arrives (seconds from the start) and how long processing takes."""

    id: int
    arrival: float
    duration: float


@dataclass(frozen=True)
class Trace:
    name: str
    jobs: tuple[Job, ...]
    horizon_s: float  # the period the trace covers; an always-on pool is billed for all of it

    @property
    def work_s(self) -> float:
        return sum(job.duration for job in self.jobs)


@dataclass(frozen=True)
class PoolParams:
    """The simulated pool. Each VM has its own typical boot time (image, size and disk differ),
    spread evenly over `boot_s * (1 ± boot_spread)`; each boot varies around it by `boot_jitter`
    (lognormal sigma)."""

    vms: int
    slots: int = 1
    boot_s: float = 90.0
    boot_spread: float = 0.33
    boot_jitter: float = 0.1
    deallocate_s: float = 60.0
    idle_cooldown_s: float = 120.0  # the app's IDLE_COOLDOWN_SECONDS default
    boot_timeout_s: float = 600.0   # the app's BOOT_TIMEOUT_SECONDS default
    # Spot members, in addition to the `vms` on-demand ones (see bench/spot.py).
    spot_vms: int = 0
    spot_price: float = 0.2            # a spot VM-second's price, on-demand = 1
    eviction_rate_per_h: float = 0.0   # independent evictions per running spot VM-hour
    burst_rate_per_h: float = 0.0      # pool-wide eviction bursts per hour
    burst_fraction: float = 0.5        # share of the allocated spot VMs a burst takes
    burst_outage_s: float = 1800.0     # after a burst, spot starts are refused this long
    notice_s: float = 30.0             # Scheduled Events' Preempt notice before deallocation
    spot_backoff_s: float = 900.0      # the app's SPOT_BACKOFF_SECONDS default

    def names(self) -> list[str]:
        width = max(2, len(str(self.vms)))
        return [f"vm{i:0{width}d}" for i in range(1, self.vms + 1)]

    def spot_names(self) -> list[str]:
        width = max(2, len(str(self.spot_vms)))
        return [f"spot{i:0{width}d}" for i in range(1, self.spot_vms + 1)]

    @property
    def total_vms(self) -> int:
        return self.vms + self.spot_vms

    def boot_means(self, seed: int) -> dict[str, float]:
        """Each VM's typical boot time, fixed per seed (shuffled so names say nothing)."""
        names = self.names() + self.spot_names()
        n = len(names)
        low, high = self.boot_s * (1 - self.boot_spread), self.boot_s * (1 + self.boot_spread)
        values = [low + (high - low) * (i + 0.5) / n for i in range(n)]
        random.Random(f"boot-means-{seed}").shuffle(values)
        return dict(zip(names, values, strict=True))


@dataclass(frozen=True)
class Scenario:
    trace: Trace
    pool: PoolParams


def _lognormal(rng: random.Random, median_s: float, sigma: float) -> float:
    return rng.lognormvariate(0.0, sigma) * median_s


def burst(seed: int, hours: float = 48.0, period_s: float = 4 * 3600.0,
          sizes: tuple[int, int] = (50, 300), median_s: float = 900.0, sigma: float = 0.8,
          offset_s: float = 600.0) -> Trace:
    """A collection every `period_s` (the COLLECT_SCHEDULE), each dropping 50-300 files at the
    same instant, some minutes after the timer (the collection itself takes time)."""
    rng = random.Random(f"burst-{seed}")
    horizon = hours * 3600.0
    jobs: list[Job] = []
    t = 0.0
    while t < horizon:
        at = t + rng.uniform(0.0, offset_s)
        for _ in range(rng.randint(*sizes)):
            jobs.append(Job(len(jobs), at, _lognormal(rng, median_s, sigma)))
        t += period_s
    return Trace("burst", tuple(jobs), horizon)


def _poisson(rng: random.Random, horizon: float, mean_gap_s: float) -> list[float]:
    times, t = [], rng.expovariate(1.0 / mean_gap_s)
    while t < horizon:
        times.append(t)
        t += rng.expovariate(1.0 / mean_gap_s)
    return times


def steady(seed: int, hours: float = 24.0, mean_gap_s: float = 60.0, median_s: float = 900.0,
           sigma: float = 0.8) -> Trace:
    """Files dropped one at a time by other systems: Poisson arrivals, lognormal processing."""
    rng = random.Random(f"steady-{seed}")
    arrivals = _poisson(rng, hours * 3600.0, mean_gap_s)
    jobs = tuple(Job(i, at, _lognormal(rng, median_s, sigma)) for i, at in enumerate(arrivals))
    return Trace("steady", jobs, hours * 3600.0)


def heavy_tail(seed: int, hours: float = 24.0, mean_gap_s: float = 90.0, alpha: float = 1.5,
               scale_s: float = 300.0) -> Trace:
    """Poisson arrivals with Pareto processing times (alpha 1.5: mean 3x the minimum, infinite
    variance): most files take minutes, a few take hours."""
    rng = random.Random(f"heavy-{seed}")
    arrivals = _poisson(rng, hours * 3600.0, mean_gap_s)
    jobs = tuple(Job(i, at, rng.paretovariate(alpha) * scale_s)
                 for i, at in enumerate(arrivals))
    return Trace("heavy_tail", jobs, hours * 3600.0)


def scenarios(seed: int, quick: bool = False, identical_boots: bool = False) -> list[Scenario]:
    """The benchmark's scenarios. The burst pool is sized for the largest batch (deallocated VMs
    cost next to nothing); the others for their peak concurrency. `identical_boots` gives every
    VM the same typical boot time (only the per-boot jitter remains)."""
    scale = 0.25 if quick else 1.0
    spread = 0.0 if identical_boots else PoolParams.boot_spread
    return [
        Scenario(burst(seed, hours=48.0 * scale), PoolParams(vms=320, boot_spread=spread)),
        Scenario(steady(seed, hours=24.0 * scale), PoolParams(vms=48, boot_spread=spread)),
        Scenario(heavy_tail(seed, hours=24.0 * scale), PoolParams(vms=48, boot_spread=spread)),
    ]
