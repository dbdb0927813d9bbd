"""The project's policy (`shared.pool.policy.decide`) driving the simulated pool, as the scaler
drives the real one: evaluated on every event and on the SCALER_SCHEDULE backstop timer.

The scaler knows when work items were queued, so it can tell the policy the recent arrival rate
(`Snapshot.arrivals_per_s`, items queued in the last `RATE_WINDOW_S` / the window). With
`rate_hint=False` the policy runs without it, as a scaler that does not supply it would.

By default it is called at once on every event and every `SCALER_TICK_S`. The running app
reacts to fewer events and later: `tick_s` is its SCALER_SCHEDULE, `triggers` the events that
ask it for a pass (work issued, a job finished), `reaction_s` how long that request takes to
become a pass (an activity through the task hub).
"""
from __future__ import annotations

from collections import deque

from bench.sim import ARRIVAL, REACT, Pool, StartRefused
from shared.pool.policy import (
    PolicyConfig,
    Snapshot,
    VmView,
    after_refusal,
    arrival_rate,
    decide,
)

SCALER_TICK_S = 30.0   # SCALER_SCHEDULE default: */30 * * * * *
RATE_WINDOW_S = 600.0  # the arrival rate the scaler reports: items queued in the last 10 min


class ProjectController:
    name = "project"
    tick_s: float | None = SCALER_TICK_S
    pull = True

    # The policy's least warm time; None keeps PolicyConfig's default (`--min-warm` sets it,
    # 0 is the policy as it was before the floor).
    min_warm_s: float | None = None

    def __init__(self, rate_hint: bool = True, tick_s: float | None = None,
                 reaction_s: float = 0.0, triggers: frozenset[str] | None = None) -> None:
        self.rate_hint = rate_hint
        if tick_s is not None:
            self.tick_s = tick_s
        self.reaction_s = reaction_s
        self.triggers = triggers  # None: every event
        self.config: PolicyConfig | None = None
        self.arrivals: deque[float] = deque()

    def setup(self, pool: Pool) -> None:
        params = pool.params
        self.config = PolicyConfig(max_running=params.total_vms,
                                   idle_cooldown_s=params.idle_cooldown_s,
                                   boot_timeout_s=params.boot_timeout_s,
                                   spot_backoff_s=params.spot_backoff_s,
                                   **({} if self.min_warm_s is None
                                      else {"min_warm_s": self.min_warm_s}))
        self.arrivals.clear()

    def snapshot(self, pool: Pool) -> Snapshot:
        views = tuple(
            VmView(name=vm.name, state=vm.state, slots=vm.slots, busy=vm.busy,
                   idle_since=vm.idle_since, state_since=vm.state_since,
                   boot_estimate_s=vm.boot_mean, priority=vm.priority)
            for vm in pool.vms.values())
        rate = None
        if self.rate_hint:
            while self.arrivals and self.arrivals[0] <= pool.now - RATE_WINDOW_S:
                self.arrivals.popleft()
            rate = arrival_rate(tuple(self.arrivals), pool.now, RATE_WINDOW_S)
        return Snapshot(vms=views, queued=len(pool.queue), in_flight=pool.in_flight,
                        now=pool.now, arrivals_per_s=rate, pending=pool.pending)

    def evaluate(self, pool: Pool) -> None:
        """One scaler pass. A refused spot start leaves that VM `evicted`; the policy is asked
        again at once, so on-demand members cover within the same pass (as the scaler does)."""
        assert self.config is not None
        refused = False
        while True:
            snapshot = self.snapshot(pool)
            actions = decide(after_refusal(snapshot) if refused else snapshot,
                             self.config)
            for name in actions.mark_failed:
                pool.mark_failed(name)
            for name in actions.drain:
                pool.drain(name)
            for name in actions.deallocate:
                pool.deallocate(name)
            retry = False
            for name in actions.start:
                try:
                    pool.start(name)
                except StartRefused:
                    retry = refused = True
                    break  # the other spot starts of this pass would be refused too
            if not retry:
                return

    def on_event(self, pool: Pool, kind: str) -> None:
        if kind == ARRIVAL:
            self.arrivals.append(pool.now)
        if self.triggers is not None and kind not in self.triggers:
            return
        if self.reaction_s > 0:
            pool.schedule(pool.now + self.reaction_s, REACT, None)
        else:
            self.evaluate(pool)

    def on_react(self, pool: Pool) -> None:
        self.evaluate(pool)

    def on_tick(self, pool: Pool) -> None:
        self.evaluate(pool)
