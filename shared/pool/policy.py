"""The pool scheduling policy: given one view of the pool, which VMs to start, stop or give up on.

VMs cost money from the moment they are asked to start until their deallocation completes, and
work waits while no slot is free. `decide` balances the two. It is a pure function of a
`Snapshot` (no I/O, no clock, no randomness), so the scaler can call it on every event (blob
arrival, job done, VM ready, VM gone) and on its backstop timer, and tests and the benchmark can
call it millions of times. Ties are broken by VM name, so the same view always gives the same
answer.

The rules, in order of preference (the seed's VM selector, made capacity-aware):

1. Work goes to a running VM with a free slot, then to a VM that is already starting (cheapest
   to bring up), and only then to a newly started deallocated VM: enough VMs are started in ONE
   evaluation to cover the whole backlog, fastest-booting first, up to `max_running` (running +
   starting + draining). Beyond that the work stays queued and the first slot to free pulls it.
2. A VM holding claimed work is never deallocated. When the pool must shrink below what is busy
   (`max_running` lowered), busy VMs are drained: they take no new work and stop once idle.
3. An idle VM is kept warm for a while, because stopping it and starting it again costs a boot
   (billed, and waited for). Ski-rental rule: it is kept at most as long as a restart costs,
   `min(idle_cooldown_s, boot_estimate_s)`, which is 2-competitive with knowing the future,
   but at least `min_warm_s` (within the cooldown): a boot of seconds says little about what a
   restart costs (billing, scheduling) and would make the pool flap between bursts. No idle VM
   is stopped while work is queued or files are waiting to be triggered (`pending`).
   Only a few free slots are kept warm at once: what is expected to arrive during one boot
   (`arrivals_per_s` x the median boot estimate, at least `min_warm_s`, rounded: none when
   arrivals are rarer than one per two boots, where a warm VM costs more than the boot it
   saves) when the caller knows the arrival rate (see `arrival_rate`), else
   `ceil(0.5 * sqrt(in_flight))` (at least one), a square-root margin for random arrivals
   against `in_flight` busy slots. Free slots on busy VMs count as warm. Surplus idle VMs (the
   tail of a batch, when work ends everywhere at once) are stopped at once.
4. A VM that stays `starting` longer than `boot_timeout_s` is marked failed, and its capacity is
   replaced in the same evaluation.
5. Spot members (`priority` "spot") cost a fraction of on-demand ones, so they are started
   first and kept warm first; on-demand members are the fallback and the first to go when idle.
   A spot VM whose capacity was taken back (evicted, or its start refused for lack of spot
   capacity) is `evicted` and is not started again for `spot_backoff_s`: capacity that was just
   reclaimed rarely comes back within minutes, and an on-demand member serves meanwhile.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from shared.contracts import VmPriority, VmState

# The pool's VM states (declared in `shared.contracts`), as the plain strings a view holds.
DEALLOCATED = VmState.DEALLOCATED.value
STARTING = VmState.STARTING.value
RUNNING = VmState.RUNNING.value
DRAINING = VmState.DRAINING.value
DEALLOCATING = VmState.DEALLOCATING.value
FAILED = VmState.FAILED.value
EVICTED = VmState.EVICTED.value
STATES = frozenset(state.value for state in VmState)

REGULAR = VmPriority.REGULAR.value  # on-demand; Azure's `priority: Regular`
SPOT = VmPriority.SPOT.value        # Azure's `priority: Spot`, evictionPolicy Deallocate
PRIORITIES = frozenset(p.value for p in VmPriority)


class PolicyInputError(ValueError):
    """A snapshot or config the policy cannot reason about (unknown state, negative counts...)."""


def _finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise PolicyInputError(f"{name} must be a finite number, got {value!r}")


@dataclass(frozen=True)
class VmView:
    """What the policy needs to know about one VM. Times are epoch seconds.

    `idle_since` is when `busy` last became 0 (running VMs); None while busy.
    `boot_estimate_s` is how long a start of this VM is expected to take (e.g. its last boot).
    `priority` is "regular" (on-demand) or "spot".
    """

    name: str
    state: str
    slots: int
    busy: int
    idle_since: float | None
    state_since: float
    boot_estimate_s: float
    priority: str = REGULAR

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise PolicyInputError("VM name must be a non-empty string")
        if self.state not in STATES:
            raise PolicyInputError(
                f"VM {self.name!r}: unknown state {self.state!r} "
                f"(expected one of {', '.join(sorted(STATES))})")
        if self.priority not in PRIORITIES:
            raise PolicyInputError(
                f"VM {self.name!r}: unknown priority {self.priority!r} (expected regular or spot)")
        if self.slots < 1:
            raise PolicyInputError(f"VM {self.name!r}: slots must be at least 1, got {self.slots}")
        if not 0 <= self.busy <= self.slots:
            raise PolicyInputError(
                f"VM {self.name!r}: busy must be from 0 to {self.slots}, got {self.busy}")
        _finite(f"VM {self.name!r} state_since", self.state_since)
        _finite(f"VM {self.name!r} boot_estimate_s", self.boot_estimate_s)
        if self.boot_estimate_s < 0:
            raise PolicyInputError(f"VM {self.name!r}: boot_estimate_s must not be negative")
        if self.idle_since is not None:
            _finite(f"VM {self.name!r} idle_since", self.idle_since)

    @property
    def free(self) -> int:
        return self.slots - self.busy


@dataclass(frozen=True)
class PolicyConfig:
    """Pool limits and timings (from settings POOL_MAX_RUNNING, IDLE_COOLDOWN_SECONDS, ...)."""

    max_running: int
    idle_cooldown_s: float
    boot_timeout_s: float
    min_running: int = 0
    spot_backoff_s: float = 900.0  # SPOT_BACKOFF_SECONDS: an evicted VM waits this long
    # The least time an idle VM stays warm (within `idle_cooldown_s`), and the least horizon
    # the warm reserve looks ahead: a boot estimate of seconds (a local agent, a warm host)
    # must not shrink both to nothing, or the pool stops and starts between bursts.
    min_warm_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_running < 0:
            raise PolicyInputError(f"max_running must not be negative, got {self.max_running}")
        if not 0 <= self.min_running <= self.max_running:
            raise PolicyInputError(
                f"min_running must be from 0 to max_running ({self.max_running}), "
                f"got {self.min_running}")
        for name in ("idle_cooldown_s", "boot_timeout_s", "spot_backoff_s", "min_warm_s"):
            value = getattr(self, name)
            _finite(name, value)
            if value < 0:
                raise PolicyInputError(f"{name} must not be negative, got {value}")


@dataclass(frozen=True)
class Snapshot:
    """One consistent view of the pool: its VMs, waiting (unclaimed) work, claimed work, now."""

    vms: tuple[VmView, ...]
    queued: int
    in_flight: int
    now: float
    # Optional: work items that arrived per second lately (e.g. jobs queued in the last
    # 10 minutes / 600). When known, it sizes the warm reserve; None falls back to in_flight.
    arrivals_per_s: float | None = None
    # Files that have arrived but are not work items yet (blobs the trigger has not started):
    # work on its way, so no idle VM is stopped while there are any.
    pending: int = 0

    def __post_init__(self) -> None:
        if self.queued < 0 or self.in_flight < 0 or self.pending < 0:
            raise PolicyInputError(
                "queued, in_flight and pending must not be negative, got "
                f"{self.queued}, {self.in_flight}, {self.pending}")
        _finite("now", self.now)
        if self.arrivals_per_s is not None:
            _finite("arrivals_per_s", self.arrivals_per_s)
            if self.arrivals_per_s < 0:
                raise PolicyInputError(
                    f"arrivals_per_s must not be negative, got {self.arrivals_per_s}")
        names = [vm.name for vm in self.vms]
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise PolicyInputError(f"VM names must be unique, repeated: {', '.join(dupes)}")


@dataclass(frozen=True)
class Actions:
    """What the scaler should do. Each tuple is sorted by VM name; a VM appears at most once.

    `drain`: VMs that must take no new work and be deallocated once idle (only when the pool
    holds more VMs than `max_running` allows and some of the surplus is busy).
    """

    start: tuple[str, ...]
    deallocate: tuple[str, ...]
    mark_failed: tuple[str, ...]
    drain: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.start or self.deallocate or self.mark_failed or self.drain)


STALE_GAPS = 3.0


def arrival_rate(arrivals: list[float] | tuple[float, ...], now: float,
                 window_s: float = 600.0) -> float:
    """Recent arrivals per second from when work items were queued, for `arrivals_per_s`.

    The count over the window, unless the queue has been silent for longer than such a rate
    makes plausible (no arrival for 3 mean gaps: under 5% for random arrivals). Then the rate is
    1 / (time since the last arrival): a batch that landed all at once minutes ago says nothing
    about what arrives during the next boot.
    """
    recent = [t for t in arrivals if now - window_s < t <= now]
    if not recent:
        return 0.0
    silence = now - max(recent)
    rate = len(recent) / window_s
    if silence * rate > STALE_GAPS:
        return 1.0 / silence
    return rate


def effective_cooldown(vm: VmView, config: PolicyConfig) -> float:
    """How long an idle VM is kept warm: the configured cooldown, capped at its restart cost
    but never below `min_warm_s` (itself capped by the cooldown)."""
    return min(config.idle_cooldown_s, max(vm.boot_estimate_s, config.min_warm_s))


WARM_BETA = 0.5  # docs/benchmarks.md: 1.0 cut steady p50 0.11 -> 0.04 boots for 0.5-1.6% cost


def warm_reserve(in_flight: int, arrivals_per_s: float | None = None,
                 boot_s: float = 0.0) -> int:
    """How many free slots to keep warm when nothing waits: what arrives during one boot.

    With a known arrival rate that is `rate * boot` rounded, so none once arrivals stop (the
    tail of a batch) or come less often than every two boots. Without it, a square-root margin
    over busy slots (random arrivals against n busy slots fluctuate by about sqrt(n)), at least
    one.
    """
    if arrivals_per_s is not None:
        return math.floor(arrivals_per_s * boot_s + 0.5)
    return max(1, math.ceil(WARM_BETA * math.sqrt(in_flight)))


def _typical_boot(vms: list[VmView]) -> float:
    """The median boot estimate: what a cold start costs the next arrival."""
    if not vms:
        return 0.0
    boots = sorted(vm.boot_estimate_s for vm in vms)
    return boots[len(boots) // 2]


def startable(vm: VmView, now: float, config: PolicyConfig) -> bool:
    """Deallocated, or evicted long enough ago that spot capacity may be back."""
    if vm.state == DEALLOCATED:
        return True
    return vm.state == EVICTED and now - vm.state_since >= config.spot_backoff_s


def after_refusal(snapshot: Snapshot, refused: frozenset[str] | set[str] = frozenset(),
                  ) -> Snapshot:
    """The snapshot as it stands once a start was refused for lack of capacity: the refused
    VMs, and every stopped spot member (capacity is per size and region, so the others would
    be refused too), read evicted as of now, so `decide` turns to other, on-demand members."""
    def view(vm: VmView) -> VmView:
        stopped = vm.state in (DEALLOCATED, EVICTED)
        if stopped and (vm.priority == SPOT or vm.name in refused):
            return replace(vm, state=EVICTED, state_since=snapshot.now)
        return vm
    return replace(snapshot, vms=tuple(view(vm) for vm in snapshot.vms))


def _cheap_first(vm: VmView) -> int:
    return 0 if vm.priority == SPOT else 1


def _idle_for(vm: VmView, now: float) -> float:
    since = vm.idle_since if vm.idle_since is not None else vm.state_since
    return now - since


def decide(snapshot: Snapshot, config: PolicyConfig) -> Actions:
    """Start, deallocate, drain and mark failed so capacity follows the backlog at least cost."""
    now = snapshot.now
    vms = sorted(snapshot.vms, key=lambda vm: vm.name)

    # Rule 4: starts that never finished. A VM that already holds claimed work is alive.
    timed_out = [vm for vm in vms if vm.state == STARTING and vm.busy == 0
                 and now - vm.state_since > config.boot_timeout_s]
    gone = {vm.name for vm in timed_out}
    starting = [vm for vm in vms if vm.state == STARTING and vm.name not in gone]
    running = [vm for vm in vms if vm.state == RUNNING]
    draining = [vm for vm in vms if vm.state == DRAINING]

    deallocate: list[str] = [vm.name for vm in draining if vm.busy == 0]
    drain: list[str] = []

    # Rule 2 (shrink): over the limit, stop idle VMs first, then drain the least busy.
    # Draining VMs are already leaving; only what would stay counts as excess.
    excess = len(running) + len(starting) - config.max_running
    if excess > 0:
        idle_first = sorted(running, key=lambda vm: (vm.busy, -_idle_for(vm, now), vm.name))
        for vm in idle_first[:excess]:
            (deallocate if vm.busy == 0 else drain).append(vm.name)
        shed = set(deallocate) | set(drain)
        running = [vm for vm in running if vm.name not in shed]
    # Deallocating VMs no longer count against the limit; drained ones do until they stop.
    counted = len(running) + len(starting) + len(drain) + sum(1 for vm in draining if vm.busy)

    # Rule 1: capacity for the whole backlog in one go, cheapest to bring up first.
    free = sum(vm.free for vm in running) + sum(vm.free for vm in starting)
    short = snapshot.queued - free
    up = len(running) + len(starting)
    below_min = config.min_running - up
    budget = config.max_running - counted
    start: list[str] = []
    if short > 0 or below_min > 0:
        candidates = sorted((vm for vm in vms if startable(vm, now, config)),
                            key=lambda vm: (_cheap_first(vm), vm.boot_estimate_s, vm.name))
        for vm in candidates:
            if budget <= 0 or (short <= 0 and below_min <= 0):
                break
            start.append(vm.name)
            short -= vm.slots
            below_min -= 1
            budget -= 1

    # Rule 3: idle VMs, spot first (cheapest to keep warm), then longest idle first (closest to
    # the end of their cooldown); on-demand VMs come last, so they are the ones let go.
    spare = free - snapshot.queued  # free slots nobody is waiting for
    up = len(running) + len(starting)
    idle = sorted((vm for vm in running if vm.busy == 0),
                  key=lambda vm: (_cheap_first(vm), -_idle_for(vm, now), vm.name))
    horizon = min(config.idle_cooldown_s, max(_typical_boot(vms), config.min_warm_s))
    reserve = warm_reserve(snapshot.in_flight, snapshot.arrivals_per_s, horizon)
    warm = max(0, spare - sum(vm.slots for vm in idle))  # already warm on busy/starting VMs
    waiting = snapshot.queued + snapshot.pending  # work here or on its way
    for vm in idle:
        if waiting or spare - vm.slots < 0 or up - 1 < config.min_running:
            continue  # work is waiting or arriving, or the pool's minimum needs it
        if _idle_for(vm, now) < effective_cooldown(vm, config) and warm < reserve:
            warm += vm.slots
            continue
        deallocate.append(vm.name)
        spare -= vm.slots
        up -= 1

    return Actions(start=tuple(sorted(start)), deallocate=tuple(sorted(deallocate)),
                   mark_failed=tuple(vm.name for vm in timed_out), drain=tuple(sorted(drain)))
