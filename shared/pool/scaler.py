"""The scaler: look at the pool, ask the policy, and carry its answer out safely.

One `run_once` is: reconcile the pool table with what the backend says (finished operations,
VMs that stopped or started outside the pool), build a `Snapshot` (VMs, queued messages, claimed
steps), call `policy.decide`, and apply the actions through the backend and the registry.

Every step is an ETag-checked transition, so a scaler racing another scaler or an agent loses
cleanly instead of doing damage: a VM is drained (takes no new work) before it is deallocated,
and the move to deallocating is refused while it holds a slot. Backend failures leave the row in
a state that matches reality (a throttled start goes back to deallocated; a VM that is already
starting stays starting) and are reported, not raised, so one bad VM does not stop the rest.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from shared.claims import ClaimStore
from shared.clock import utcnow
from shared.pool import policy
from shared.pool.backends import make_backend
from shared.pool.backends.base import (
    DEALLOCATED,
    DEALLOCATING,
    RUNNING,
    STARTING,
    STOPPED,
    BackendError,
    CapacityUnavailable,
    InvalidOperation,
    Operation,
    OperationInProgress,
    PoolBackend,
    Throttled,
    VmNotFound,
)
from shared.pool.members import parse_pool_vms
from shared.pool.registry import (
    InvalidTransition,
    PoolRegistry,
    RegistryContention,
    UnknownVm,
    VmBusy,
    VmPriority,
    VmRecord,
    VmState,
)
from shared.workitem import WorkItem, WorkItemError

if TYPE_CHECKING:
    from shared.services import Services

DEFAULT_BOOT_ESTIMATE_S = 90.0
# A row turns `starting` just before the backend is asked; another scaler reconciling in that
# moment must not take the still-deallocated VM for a failed start.
START_GRACE_S = 60.0
_UP = (VmState.STARTING, VmState.RUNNING, VmState.DRAINING)
_ALIVE = (VmState.STARTING, VmState.RUNNING, VmState.DRAINING, VmState.DEALLOCATING)


@dataclass
class ScaleReport:
    """What one scaler pass did; `errors` maps VM names to what went wrong with them."""

    snapshot: policy.Snapshot | None = None
    actions: policy.Actions | None = None
    started: list[str] = field(default_factory=list)
    drained: list[str] = field(default_factory=list)
    deallocating: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    reconciled: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)  # starts refused for lack of capacity
    fallbacks: int = 0  # decisions taken again in this pass after a refusal

    def to_dict(self) -> dict[str, Any]:
        return {"started": self.started, "drained": self.drained,
                "deallocating": self.deallocating, "failed": self.failed,
                "reconciled": self.reconciled, "errors": self.errors,
                "fallbacks": self.fallbacks,
                "queued": self.snapshot.queued if self.snapshot else None,
                "inFlight": self.snapshot.in_flight if self.snapshot else None}


def _epoch(value: datetime) -> float:
    return value.timestamp()


def _as_datetime(now: datetime | float | None) -> datetime:
    if now is None:
        return utcnow()
    if isinstance(now, datetime):
        return now
    return datetime.fromtimestamp(now, timezone.utc)


def sync_members(registry: PoolRegistry, pool_vms: str, slots: int,
                 backend: PoolBackend | None = None, spot_vms: str = "") -> list[str]:
    """Make sure every VM of `POOL_VMS` and `POOL_SPOT_VMS` has a row; returns the names
    newly added."""
    spot = parse_pool_vms(spot_vms) if spot_vms.strip() else []
    names = list(dict.fromkeys([*parse_pool_vms(pool_vms), *spot]))
    ids = None
    backend_id = getattr(backend, "backend_id", None)
    if callable(backend_id):
        ids = {name: backend_id(name) for name in names}
    return registry.ensure_members(names, slots, ids, spot=spot)


class Scaler:
    """Applies `policy.decide` to one pool (registry + backend + work queue + claims)."""

    def __init__(self, registry: PoolRegistry, backend: PoolBackend, queue: Any,
                 claims: ClaimStore, config: policy.PolicyConfig,
                 default_boot_estimate_s: float = DEFAULT_BOOT_ESTIMATE_S,
                 min_reconcile_interval_s: float = 0.0,
                 failed_retry_s: float | None = None) -> None:
        self.registry = registry
        self.backend = backend
        self.queue = queue
        self.claims = claims
        self.config = config
        self.default_boot_estimate_s = default_boot_estimate_s
        # When work items were queued recently (epoch seconds), for the policy's arrival rate;
        # without it the policy sizes its warm reserve from the work in flight alone.
        self.arrival_times: Callable[[float], list[float]] | None = None
        # How many files wait in the data container, counting at most the limit it is given:
        # work on its way that the queue does not show yet, so the policy stops no idle VM
        # meanwhile.
        self.waiting_files: Callable[[int], int] | None = None
        # Passes triggered by every event would each read every VM's power state; ARM limits
        # reads per subscription, so a busy app reconciles at most this often.
        self.min_reconcile_interval_s = min_reconcile_interval_s
        self._last_reconcile = float("-inf")
        # How long a failed VM sits out before it may be started again (a boot that failed
        # once is retried, not excluded for good); by default one boot timeout.
        self.failed_retry_s = config.boot_timeout_s if failed_retry_s is None else failed_retry_s

    @classmethod
    def from_services(cls, services: Services, backend: PoolBackend | None = None,
                      **backend_options: Any) -> Scaler:
        """A scaler over the services' registry, claims and work queue, with the configured
        backend (or `backend`); `backend_options` go to `make_backend`."""
        settings = services.settings
        backend = backend or make_backend(settings, registry=services.registry,
                                          **backend_options)
        config = policy.PolicyConfig(max_running=settings.pool_max_running,
                                     idle_cooldown_s=float(settings.idle_cooldown_seconds),
                                     boot_timeout_s=float(settings.boot_timeout_seconds),
                                     min_running=settings.pool_min_running,
                                     spot_backoff_s=float(settings.spot_backoff_seconds))
        return cls(services.registry, backend, services.work_queue, services.claims, config,
                   min_reconcile_interval_s=10.0)

    # --- looking -----------------------------------------------------------------------------

    PEEK_LIMIT = 32  # the most messages one peek returns

    def queued(self) -> int:
        """Work items waiting for an agent.

        The queue's approximate count also holds the messages agents are working on (they are
        only invisible), which would make the policy start VMs for work already in hand. A peek
        sees visible messages only, so a small backlog is counted exactly; a large one is
        approximate either way.
        """
        props = self.queue.get_queue_properties()
        count = int(props.approximate_message_count or 0)
        if count > self.PEEK_LIMIT:
            return count
        messages = self.queue.peek_messages(max_messages=self.PEEK_LIMIT)
        if not messages:
            return 0
        # Items of cancelled jobs wait only to be dropped by the next agent: no VM for them.
        withdrawn = self.claims.withdrawn()
        return sum(1 for m in messages if _claim_key(m.content) not in withdrawn)

    def view(self, rec: VmRecord) -> policy.VmView:
        busy = min(rec.busy, rec.slots)
        return policy.VmView(
            name=rec.name, state=rec.state.value, slots=rec.slots, busy=busy,
            idle_since=_epoch(rec.last_activity) if busy == 0 else None,
            state_since=_epoch(rec.state_since),
            boot_estimate_s=rec.boot_seconds or self.default_boot_estimate_s,
            priority=rec.priority.value)

    def snapshot(self, now: datetime | float | None = None,
                 records: Iterable[VmRecord] | None = None) -> policy.Snapshot:
        stamp = _as_datetime(now)
        recs = list(records) if records is not None else self.registry.list()
        # A VM a pool change has in hand is the change's to start or stop, not the policy's.
        recs = [r for r in recs if not r.held(stamp)]
        now_s = _epoch(stamp)
        rate = (policy.arrival_rate(self.arrival_times(now_s), now_s)
                if self.arrival_times is not None else None)
        queued, in_flight = self.queued(), len(self.claims.active())
        return policy.Snapshot(vms=tuple(self.view(r) for r in recs), queued=queued,
                               in_flight=in_flight, now=now_s, arrivals_per_s=rate,
                               pending=self._pending(queued, in_flight))

    # Old files a listing may meet before the recent ones (it runs in name order): stuck ones
    # the sweeper has yet to restart, which must not hide the work that is on its way.
    WAITING_MARGIN = 32

    def _pending(self, queued: int, in_flight: int) -> int:
        """Files waiting in the data container beyond the work already queued or claimed (the
        blob trigger has not started them yet); 0 when unknown or not needed.

        The policy only asks whether anything waits (to keep idle VMs up), so with work
        queued the container is not listed at all, and otherwise only far enough to find one
        file beyond those in flight (their originals are still there): a busy pass costs no
        listing, and no pass parses a page of thousands of names."""
        if self.waiting_files is None or queued > 0:
            return 0
        try:
            return max(0, self.waiting_files(in_flight + 1 + self.WAITING_MARGIN) - in_flight)
        except Exception:  # noqa: BLE001 - a listing failure only loses the hint
            return 0

    # --- one pass ----------------------------------------------------------------------------

    def run_once(self, now: datetime | float | None = None) -> ScaleReport:
        """Reconcile, decide, apply. Never raises for a single VM's trouble (see `errors`).

        The pass is one `backend.one_pass()`: the power states it reads come from one look at
        the pool (one ARM list request for the azure backend), not one request per VM."""
        with self.backend.one_pass():
            return self._run_once(now)

    def _run_once(self, now: datetime | float | None) -> ScaleReport:
        stamp = _as_datetime(now)
        report = ScaleReport()
        clock = time.monotonic()
        if clock - self._last_reconcile >= self.min_reconcile_interval_s:
            self._last_reconcile = clock
            self.reconcile(stamp, report)
        report.snapshot = self.snapshot(stamp)
        refused = set(report.refused)
        if refused:  # reconcile learned of a refused start: no spot in this pass
            report.snapshot = policy.after_refusal(report.snapshot, refused)
            report.refused = []
        report.actions = policy.decide(report.snapshot, self.config)
        if not self.backend.manages_power:  # the machines come and go by themselves
            return report
        self.apply(report.actions, stamp, report)
        # A start refused for lack of capacity left its VM `evicted`: decide again at once so
        # other members (on-demand ones, when spot capacity is gone) cover in this same pass.
        for _ in range(self.MAX_FALLBACKS):
            if not report.refused:
                break
            report.fallbacks += 1
            refused.update(report.refused)
            report.refused = []
            report.snapshot = policy.after_refusal(self.snapshot(stamp), refused)
            report.actions = policy.decide(report.snapshot, self.config)
            self.apply(report.actions, stamp, report)
        return report

    MAX_FALLBACKS = 3  # each one follows a refused start; more would only meet refusals again

    def apply(self, actions: policy.Actions, now: datetime | float | None = None,
              report: ScaleReport | None = None) -> ScaleReport:
        stamp = _as_datetime(now)
        report = report or ScaleReport(actions=actions)
        for vm in actions.mark_failed:
            self._guard(vm, report, lambda v: self.mark_failed(
                v, f"no sign of life within {self.config.boot_timeout_s:.0f}s of starting",
                stamp, report))
        for vm in getattr(actions, "drain", ()):
            self._guard(vm, report, lambda v: self.drain(v, stamp, report))
        for vm in actions.deallocate:
            self._guard(vm, report, lambda v: self.stop(v, stamp, report))
        for vm in actions.start:
            self._guard(vm, report, lambda v: self.start(v, stamp, report))
        return report

    @staticmethod
    def _guard(vm: str, report: ScaleReport, action: Any) -> None:
        try:
            action(vm)
        except (UnknownVm, InvalidTransition, RegistryContention) as exc:
            report.errors[vm] = str(exc)  # someone else moved first, or the VM left the pool

    # --- actions on one VM (also used by pool changes from the API) ---------------------

    def start(self, vm: str, now: datetime | float | None = None,
              report: ScaleReport | None = None) -> VmRecord:
        """Start a deallocated or failed VM (or take a draining one back into service)."""
        stamp = _as_datetime(now)
        report = report if report is not None else ScaleReport()
        rec = self.registry.get(vm)
        if rec.state == VmState.DRAINING:
            rec = self.registry.transition(vm, VmState.RUNNING, [VmState.DRAINING], now=stamp)
            report.started.append(vm)
            return rec
        # A failed VM may be started again (an operator's pool.start): its slots are void.
        self.registry.transition(vm, VmState.STARTING,
                                 [VmState.DEALLOCATED, VmState.EVICTED, VmState.FAILED],
                                 now=stamp, reason="", operation="", busy=0)
        try:
            op = self.backend.start(vm)
        except CapacityUnavailable as exc:
            report.errors[vm] = str(exc)
            return self._no_capacity(vm, str(exc), stamp, report)
        except OperationInProgress as exc:
            return self._start_conflict(vm, str(exc), stamp, report)
        except VmNotFound as exc:
            report.errors[vm] = str(exc)
            return self._fail(vm, str(exc), stamp, report, allowed=[VmState.STARTING])
        except Throttled as exc:
            report.errors[vm] = str(exc)
            return self.registry.transition(vm, VmState.DEALLOCATED, [VmState.STARTING],
                                            now=stamp, reason=_retry_text(exc))
        except BackendError as exc:
            report.errors[vm] = str(exc)
            return self.registry.transition(vm, VmState.DEALLOCATED, [VmState.STARTING],
                                            now=stamp, reason=f"start failed: {exc}")
        report.started.append(vm)
        # Billing starts when the backend took the request (its own clock), not at this pass.
        asked = datetime.fromtimestamp(op.started_at, timezone.utc) if op.started_at else stamp
        return self.registry.transition(vm, VmState.STARTING, [VmState.STARTING], now=stamp,
                                        operation=op.to_json(), billed_since=asked)

    def _no_capacity(self, vm: str, message: str, stamp: datetime,
                     report: ScaleReport) -> VmRecord:
        """Azure refused the start for capacity: a spot member reads evicted (left alone for
        the back-off), an on-demand one deallocated; either way the pass decides again."""
        report.refused.append(vm)
        rec = self.registry.get(vm)
        target = VmState.EVICTED if rec.priority == VmPriority.SPOT else VmState.DEALLOCATED
        return self.registry.transition(vm, target, [VmState.STARTING], now=stamp,
                                        operation="", reason=f"start refused: {message}"[:1000])

    def evicted(self, vm: str, reason: str, now: datetime | float | None = None,
                report: ScaleReport | None = None) -> VmRecord:
        """Azure took a spot VM back (its agent saw the Preempt notice, or the power state
        says so): it holds no slot any more and is not started for the back-off."""
        stamp = _as_datetime(now)
        rec = self.registry.transition(
            vm, VmState.EVICTED, [VmState.STARTING, VmState.RUNNING, VmState.DRAINING,
                                  VmState.DEALLOCATING, VmState.EVICTED],
            now=stamp, busy=0, operation="", reason=reason[:1000])
        if report is not None:
            report.reconciled[vm] = VmState.EVICTED.value
        return rec

    def _start_conflict(self, vm: str, message: str, stamp: datetime,
                        report: ScaleReport) -> VmRecord:
        """The backend is busy with the VM: keep the row in line with what it really does."""
        report.errors[vm] = message
        try:
            power = self.backend.power_state(vm)
        except BackendError:
            power = ""
        if power in (RUNNING, STARTING):
            return self.registry.transition(vm, VmState.STARTING, [VmState.STARTING],
                                            now=stamp, reason=message)
        return self.registry.transition(vm, VmState.DEALLOCATED, [VmState.STARTING], now=stamp,
                                        reason=message)

    def drain(self, vm: str, now: datetime | float | None = None,
              report: ScaleReport | None = None) -> VmRecord:
        """Take no new work on `vm`; it is deallocated once its busy slots are released."""
        stamp = _as_datetime(now)
        rec = self.registry.transition(vm, VmState.DRAINING,
                                       [VmState.RUNNING, VmState.STARTING, VmState.DRAINING],
                                       now=stamp)
        if report is not None and vm not in report.drained:
            report.drained.append(vm)
        return rec

    def stop(self, vm: str, now: datetime | float | None = None,
             report: ScaleReport | None = None) -> VmRecord:
        """Drain `vm`, and deallocate it if (and only if) it holds no work (a failed VM's
        slots hold none: it is deallocated at once)."""
        stamp = _as_datetime(now)
        report = report if report is not None else ScaleReport()
        rec = self.registry.get(vm)
        if rec.state in (VmState.DEALLOCATING, VmState.DEALLOCATED):
            return rec
        if rec.state == VmState.FAILED:
            return self._deallocate_failed(rec, stamp, report, "stopped by a pool change")
        rec = self.drain(vm, stamp, report)
        if rec.busy > 0:
            return rec  # drained; the pass after its last release deallocates it
        try:
            rec = self.registry.transition(vm, VmState.DEALLOCATING, [VmState.DRAINING],
                                           now=stamp)
        except VmBusy:
            return self.registry.get(vm)  # an agent took a slot before the drain landed
        if vm in report.drained:
            report.drained.remove(vm)  # it is past draining now
        try:
            op = self.backend.deallocate(vm)
        except VmNotFound as exc:
            report.errors[vm] = str(exc)
            return self._fail(vm, str(exc), stamp, report, allowed=[VmState.DEALLOCATING])
        except OperationInProgress as exc:
            report.errors[vm] = str(exc)
            try:
                power = self.backend.power_state(vm)
            except BackendError:
                power = ""
            if power in (DEALLOCATING, DEALLOCATED):
                return self.registry.transition(vm, VmState.DEALLOCATING,
                                                [VmState.DEALLOCATING], now=stamp,
                                                reason=str(exc))
            return self.registry.transition(vm, VmState.DRAINING, [VmState.DEALLOCATING],
                                            now=stamp, reason=str(exc))
        except BackendError as exc:  # throttled or failed: stay drained, retry next pass
            report.errors[vm] = str(exc)
            reason = _retry_text(exc) if isinstance(exc, Throttled) else f"deallocate failed: {exc}"
            return self.registry.transition(vm, VmState.DRAINING, [VmState.DEALLOCATING],
                                            now=stamp, reason=reason)
        report.deallocating.append(vm)
        return self.registry.transition(vm, VmState.DEALLOCATING, [VmState.DEALLOCATING],
                                        now=stamp, operation=op.to_json(), reason="")

    def mark_failed(self, vm: str, reason: str, now: datetime | float | None = None,
                    report: ScaleReport | None = None) -> VmRecord:
        """Give up on `vm`; if it holds no work, also ask the backend to stop it (cost)."""
        stamp = _as_datetime(now)
        report = report if report is not None else ScaleReport()
        rec = self._fail(vm, reason, stamp, report, allowed=list(_ALIVE))
        if rec.busy == 0:
            try:
                self.backend.deallocate(vm)
            except BackendError as exc:
                report.errors[vm] = f"{reason}; deallocating it failed too: {exc}"
        return rec

    def _fail(self, vm: str, reason: str, stamp: datetime, report: ScaleReport,
              allowed: list[VmState], **fields_: Any) -> VmRecord:
        rec = self.registry.transition(vm, VmState.FAILED, allowed, now=stamp, reason=reason,
                                       operation="", **fields_)
        report.failed.append(vm)
        return rec

    # --- reconcile ---------------------------------------------------------------------------

    def reconcile(self, now: datetime | float | None = None,
                  report: ScaleReport | None = None) -> ScaleReport:
        """Bring the table in line with the backend: finished operations and power states."""
        with self.backend.one_pass():
            return self._reconcile(_as_datetime(now),
                                   report if report is not None else ScaleReport())

    def _reconcile(self, stamp: datetime, report: ScaleReport) -> ScaleReport:
        for rec in self.registry.list():
            try:
                if rec.state == VmState.FAILED:
                    self._maybe_recovered(rec, stamp, report)
                else:
                    self._reconcile_one(rec, stamp, report)
            except (UnknownVm, InvalidTransition, RegistryContention) as exc:
                report.errors.setdefault(rec.name, str(exc))
            except Throttled as exc:
                report.errors[rec.name] = _retry_text(exc)
                break  # asking about the other VMs now would only be throttled too
            except BackendError as exc:
                report.errors[rec.name] = str(exc)
        return report

    def _maybe_recovered(self, rec: VmRecord, stamp: datetime, report: ScaleReport) -> None:
        """A failed VM is not excluded for good. One whose agent heartbeats after the failure
        (a slow boot) is taken back at once; after `failed_retry_s` one the backend reports
        deallocated is deallocated (the next start retries the boot), and one still up but
        silent is deallocated first."""
        power = self.backend.power_state(rec.name)
        heard = rec.last_heartbeat is not None and rec.last_heartbeat > rec.state_since
        if heard and power == RUNNING:
            new = self.registry.transition(rec.name, VmState.RUNNING, [VmState.FAILED],
                                           now=stamp, busy=0,
                                           reason=f"recovered (was failed: {rec.reason})")
        elif _elapsed(rec.state_since, stamp) < self.failed_retry_s:
            return
        elif power in (DEALLOCATED, STOPPED):
            new = self.registry.transition(rec.name, VmState.DEALLOCATED, [VmState.FAILED],
                                           now=stamp, busy=0, operation="",
                                           reason=f"retry after failure: {rec.reason}")
        else:
            new = self._deallocate_failed(rec, stamp, report, "retry after failure")
        report.reconciled[rec.name] = new.state.value

    def _deallocate_failed(self, rec: VmRecord, stamp: datetime, report: ScaleReport,
                           why: str) -> VmRecord:
        """Failed to deallocating: its slots are void (its claims go stale and are retried
        elsewhere), and the machine is asked to stop."""
        new = self.registry.transition(rec.name, VmState.DEALLOCATING, [VmState.FAILED],
                                       now=stamp, busy=0, operation="",
                                       reason=f"{why}: {rec.reason}")
        try:
            op = self.backend.deallocate(rec.name)
        except OperationInProgress as exc:
            report.errors[rec.name] = str(exc)
            return new
        report.deallocating.append(rec.name)
        return self.registry.transition(rec.name, VmState.DEALLOCATING, [VmState.DEALLOCATING],
                                        now=stamp, operation=op.to_json())

    def _reconcile_one(self, rec: VmRecord, stamp: datetime, report: ScaleReport) -> None:
        vm = rec.name
        in_flight = False
        if rec.operation:
            in_flight = self._follow_operation(rec, stamp, report)
            rec = self.registry.get(vm)
            if rec.state == VmState.FAILED:
                return
        try:
            power = self.backend.power_state(vm)
        except VmNotFound as exc:
            self._fail(vm, str(exc), stamp, report, allowed=list(VmState), busy=0)
            report.reconciled[vm] = VmState.FAILED.value
            return
        new: VmRecord | None = None
        gone = power in (DEALLOCATED, STOPPED)
        if rec.state == VmState.DEALLOCATING and power == DEALLOCATED:
            new = self.registry.transition(vm, VmState.DEALLOCATED, [VmState.DEALLOCATING],
                                           now=self.stopped_when(rec, stamp), operation="",
                                           reason="")
        elif (rec.state == VmState.STARTING and gone and not in_flight
              and _elapsed(rec.state_since, stamp) > START_GRACE_S):
            new = self._fail(vm, f"the VM is {power} although it was started", stamp, report,
                             allowed=[VmState.STARTING])
        elif (rec.priority == VmPriority.SPOT and gone and not in_flight
              and rec.state in (VmState.RUNNING, VmState.DRAINING)):
            new = self.evicted(vm, f"{power} by Azure (spot eviction)", stamp)
        elif rec.state in (VmState.RUNNING, VmState.DRAINING) and gone:
            # The backend's word is the truth: a deallocated VM is deallocated, and can be
            # started again. Work it held goes back to the queue now, not when claims go stale.
            reason = f"{power} outside the pool"
            if rec.busy:
                handed_back = self.claims.abandon_held_by(vm, before=stamp)
                reason = (f"{power} while holding {rec.busy} slot(s); {len(handed_back)} "
                          "claim(s) handed back to the queue")
            new = self.registry.transition(vm, VmState.DEALLOCATED, [rec.state], now=stamp,
                                           operation="", reason=reason, busy=0)
        elif rec.state == VmState.DEALLOCATED and power in (RUNNING, STARTING):
            target = VmState.RUNNING if power == RUNNING else VmState.STARTING
            new = self.registry.transition(vm, target, [VmState.DEALLOCATED], now=stamp,
                                           reason="started outside the pool")
        elif rec.state == VmState.RUNNING and power == RUNNING and not rec.private_ip:
            addresses = self.backend.addresses(vm)
            self.registry.transition(vm, VmState.RUNNING, [VmState.RUNNING], now=stamp,
                                     private_ip=addresses.get("private_ip") or "",
                                     public_ip=addresses.get("public_ip") or "")
        if new is not None:
            report.reconciled[vm] = new.state.value

    def stopped_when(self, rec: VmRecord, noticed: datetime) -> datetime:
        """When the VM really stopped: the backend's record if it has one that falls in the
        billed interval, else when it was noticed."""
        at = self.backend.stopped_at(rec.name)
        if at is None:
            return noticed
        stamp = datetime.fromtimestamp(at, timezone.utc)
        since = rec.billed_since or rec.state_since
        return stamp if since <= stamp <= noticed else noticed

    def _follow_operation(self, rec: VmRecord, stamp: datetime, report: ScaleReport) -> bool:
        """Poll the VM's stored operation once; True while it is still running."""
        try:
            op = Operation.from_json(rec.operation)
            status = self.backend.poll(op)
        except InvalidOperation as exc:
            self.registry.transition(rec.name, rec.state, [rec.state], now=stamp, operation="",
                                     reason=f"dropped an unreadable operation: {exc}")
            return False
        if not status.done:
            if status.operation != op:
                self.registry.transition(rec.name, rec.state, [rec.state], now=stamp,
                                         operation=status.operation.to_json())
            return True
        if status.succeeded:
            self.registry.transition(rec.name, rec.state, [rec.state], now=stamp, operation="")
            return False
        error = status.error or f"{op.kind} {status.status}"
        report.errors[rec.name] = error
        if op.kind == "start" and rec.state == VmState.STARTING and status.capacity:
            self._no_capacity(rec.name, error, stamp, report)
        elif op.kind == "start" and rec.state == VmState.STARTING:
            self._fail(rec.name, f"start failed: {error}", stamp, report,
                       allowed=[VmState.STARTING])
        elif op.kind == "deallocate" and rec.state == VmState.DEALLOCATING:
            self.registry.transition(rec.name, VmState.DRAINING, [VmState.DEALLOCATING],
                                     now=stamp, operation="",
                                     reason=f"deallocate failed: {error}")
        else:
            self.registry.transition(rec.name, rec.state, [rec.state], now=stamp,
                                     operation="", reason=f"{op.kind} failed: {error}")
        return False


def _claim_key(content: Any) -> tuple[str, str] | None:
    try:
        item = WorkItem.from_json(content)
    except WorkItemError:
        return None
    return item.job_id, item.step_key


def _elapsed(since: datetime, now: datetime) -> float:
    return (now - since).total_seconds()


def _retry_text(exc: BackendError) -> str:
    after = getattr(exc, "retry_after", None)
    return f"throttled ({exc}); retry after {after:g}s" if after else f"throttled ({exc})"


def run_scaler(services: Services, now: float | None = None,
               **backend_options: Any) -> ScaleReport:
    """One backstop pass with a scaler of its own: members from settings, then `run_once`."""
    scaler = Scaler.from_services(services, **backend_options)
    settings = services.settings
    sync_members(scaler.registry, settings.pool_vms, settings.vm_slots, scaler.backend,
                 settings.pool_spot_vms)
    return scaler.run_once(now if now is not None else time.time())
