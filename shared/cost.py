"""What the pool cost: billed VM-seconds split into boot, processing and idle, and money.

A VM is billed from the start request until it is deallocated (the pool table keeps each
VM's open interval and the seconds of the closed ones; closed intervals are also rows of their
own). Within an interval:
- boot: from the start request until the agent was first seen (the whole interval if it never
  came up);
- processing: the steps agents ran there (each claim's reported duration, divided by the VM's
  slots: a job's share of the machine), at most what is left after the boot;
- idle: the rest (waiting for work, the cooldown, draining and the stop itself).
So boot + processing + idle = billed, for every interval and every sum of them. A run's cost
is its jobs' processing plus a share of each interval's boot and idle in proportion to its
processing there; what no run processed in is "unattributed".

With `VM_PRICES` (hourly price per VM size, and optionally per priority: `size[:priority]=price`)
seconds also become money; spot members (`size:spot=price`) are priced as such (a job's money
too, by the member each of its claims ran on), and every total is also given per priority
(`byPriority`: regular and spot billed seconds and money).
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from shared.api import bad_request
from shared.clock import utcnow
from shared.pool.registry import UnknownVm, VmRecord
from shared.services import Services

REGULAR = "regular"
PARTS = ("billed", "boot", "processing", "idle")


@dataclass
class Split:
    """Seconds by part (and money when there is a price)."""

    billed: float = 0.0
    boot: float = 0.0
    processing: float = 0.0
    idle: float = 0.0
    money: float | None = None

    def add(self, other: Split, share: float = 1.0) -> None:
        for part in PARTS:
            setattr(self, part, getattr(self, part) + share * getattr(other, part))
        if other.money is not None:
            self.money = (self.money or 0.0) + share * other.money

    def to_api(self) -> dict[str, Any]:
        out: dict[str, Any] = {f"{p}VmSeconds": round(getattr(self, p), 3) for p in PARTS}
        if self.money is not None:
            out["money"] = round(self.money, 6)
        return out


@dataclass
class Interval:
    vm: str
    start: datetime
    end: datetime
    boot: float
    slots: int
    priority: str = REGULAR
    open: bool = False
    # processing seconds by run id ("" = a job outside any run)
    processing: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @property
    def seconds(self) -> float:
        return max(0.0, (self.end - self.start).total_seconds())

    def split(self, price_per_hour: float | None) -> Split:
        billed = self.seconds
        boot = min(self.boot, billed)
        processing = min(sum(self.processing.values()), billed - boot)
        out = Split(billed, boot, processing, billed - boot - processing)
        if price_per_hour is not None:
            out.money = billed / 3600.0 * price_per_hour
        return out


class CostBook:
    """Intervals of every VM with the processing done in them, read once per request."""

    def __init__(self, services: Services, now: datetime | None = None,
                 job_id: str | None = None) -> None:
        """Read every interval and claim; with `job_id`, only that job's claims and the
        intervals of the VMs they ran on (enough for `job()`, not for totals or runs)."""
        self.services = services
        self.now = now or utcnow()
        s = services.settings
        self.prices = dict(s.vm_prices)
        self.size = s.pool_vm_size or "default"
        registry = services.registry
        claims = self._claims(job_id)
        if job_id is None:
            rows, self.vms = registry.intervals(), registry.list()
            self.job_runs = {job.job_id: job.run_id for job in services.jobs.list(limit=10**7)}
        else:
            names = sorted({claim.get("vm") or "" for claim in claims} - {""})
            rows = [row for vm in names for row in registry.intervals(vm=vm)]
            self.vms = [rec for vm in names if (rec := self._record(vm)) is not None]
            self.job_runs = {}
        self.intervals: list[Interval] = []
        for row in rows:
            self.intervals.append(Interval(row["vm"], row["start"], row["end"],
                                           float(row.get("bootSeconds", 0.0)),
                                           int(row.get("slots", 1)),
                                           row.get("priority") or REGULAR))
        for rec in self.vms:
            if rec.billed_since is not None:
                boot = (rec.interval_boot_s if rec.interval_boot_s >= 0
                        else (self.now - rec.billed_since).total_seconds())
                self.intervals.append(Interval(rec.name, rec.billed_since, self.now, boot,
                                               rec.slots, rec.priority.value, open=True))
        self.job_processing: dict[str, float] = defaultdict(float)
        # Money per job is priced by the member each claim ran on: a spot second costs less.
        self.job_money: dict[str, float] = defaultdict(float)
        self._assign_claims(claims)

    def _claims(self, job_id: str | None) -> list[dict[str, Any]]:
        query, params = "durationMs ge 0", {}
        if job_id is not None:
            query, params = "PartitionKey eq @job and durationMs ge 0", {"job": job_id}
        return list(self.services.claims.table.query_entities(
            query, parameters=params, select=["PartitionKey", "vm", "finishedAt", "durationMs"]))

    def _record(self, vm: str) -> VmRecord | None:
        try:
            return self.services.registry.get(vm)
        except UnknownVm:
            return None  # removed from the pool since: its closed intervals still count

    def price(self, priority: str = REGULAR) -> float | None:
        for key in (f"{self.size}:{priority}", self.size, f"default:{priority}", "default"):
            if key in self.prices:
                return self.prices[key]
        return None

    def _assign_claims(self, claims: list[dict[str, Any]]) -> None:
        by_vm: dict[str, list[Interval]] = defaultdict(list)
        for interval in self.intervals:
            by_vm[interval.vm].append(interval)
        for claim in claims:
            at = claim.get("finishedAt")
            vm = claim.get("vm") or ""
            if at is None or not vm:
                continue
            for interval in by_vm.get(vm, ()):
                if interval.start <= at <= interval.end:
                    seconds = float(claim["durationMs"]) / 1000.0 / max(1, interval.slots)
                    job_id = claim["PartitionKey"]
                    interval.processing[self.job_runs.get(job_id, "")] += seconds
                    self.job_processing[job_id] += seconds
                    price = self.price(interval.priority)
                    if price is not None:
                        self.job_money[job_id] += seconds / 3600.0 * price
                    break

    # --- answers ---------------------------------------------------------------------------

    def total(self, since: datetime | None = None, until: datetime | None = None) -> Split:
        out = Split()
        for interval in self.intervals:
            share = _overlap(interval, since, until)
            if share > 0:
                out.add(interval.split(self.price(interval.priority)), share)
        return out

    def by_priority(self, since: datetime | None = None,
                    until: datetime | None = None) -> dict[str, Split]:
        """Billed seconds (and money) of on-demand and of spot members, apart."""
        out: dict[str, Split] = defaultdict(Split)
        for interval in self.intervals:
            share = _overlap(interval, since, until)
            if share > 0:
                out[interval.priority].add(interval.split(self.price(interval.priority)), share)
        return dict(out)

    def by_vm(self) -> dict[str, Split]:
        out: dict[str, Split] = defaultdict(Split)
        for interval in self.intervals:
            out[interval.vm].add(interval.split(self.price(interval.priority)))
        return out

    def run(self, run_id: str) -> Split:
        out = Split()
        for interval in self.intervals:
            out.add(*self._run_share(interval, run_id))
        return out

    def _run_share(self, interval: Interval, run_id: str) -> tuple[Split, float]:
        """The run's part of an interval: its processing, and boot and idle in proportion."""
        split = interval.split(self.price(interval.priority))
        total = sum(interval.processing.values())
        mine = interval.processing.get(run_id, 0.0)
        if total <= 0 or mine <= 0:
            return Split(), 0.0
        return split, mine / total

    def job(self, job_id: str) -> dict[str, Any]:
        seconds = self.job_processing.get(job_id, 0.0)
        out: dict[str, Any] = {"processingVmSeconds": round(seconds, 3)}
        if self.price() is not None or job_id in self.job_money:
            out["money"] = round(self.job_money.get(job_id, 0.0), 6)
        return out

    def report(self, since: datetime, until: datetime) -> dict[str, Any]:
        """`GET /api/cost`: per UTC day and per run, and what no run used."""
        days = []
        day = since.replace(hour=0, minute=0, second=0, microsecond=0)
        while day < until:
            nxt = day + timedelta(days=1)
            split = self.total(max(day, since), min(nxt, until))
            days.append({"day": day.date().isoformat(), **split.to_api()})
            day = nxt
        runs: dict[str, Split] = defaultdict(Split)
        unattributed = Split()
        for interval in self.intervals:
            share = _overlap(interval, since, until)
            if share <= 0:
                continue
            split = interval.split(self.price(interval.priority))
            total = sum(interval.processing.values())
            if total <= 0:
                unattributed.add(split, share)
                continue
            for run_id, seconds in interval.processing.items():
                runs[run_id or "(no run)"].add(split, share * seconds / total)
        return {"from": since.isoformat(), "to": until.isoformat(),
                "currency": "per VM_PRICES" if self.prices else None,
                "total": self.total(since, until).to_api(),
                "byPriority": {p: s.to_api() for p, s in
                               sorted(self.by_priority(since, until).items())},
                "days": days,
                "runs": [{"runId": r, **s.to_api()} for r, s in sorted(runs.items())],
                "unattributed": unattributed.to_api()}


def _overlap(interval: Interval, since: datetime | None, until: datetime | None) -> float:
    """The fraction of the interval inside [since, until)."""
    start = max(interval.start, since) if since else interval.start
    end = min(interval.end, until) if until else interval.end
    if interval.seconds <= 0:
        return 1.0 if (since is None or interval.start >= since) and (
            until is None or interval.start < until) else 0.0
    return max(0.0, (end - start).total_seconds()) / interval.seconds


def parse_time(raw: str | None, name: str, default: datetime) -> datetime:
    """An RFC 3339 date-time (`2026-12-01T00:00:00Z`), as the OpenAPI document says."""
    if raw is None:
        return default
    text = raw.strip().upper()
    try:
        if not _RFC3339.match(text):
            raise ValueError(text)
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise bad_request(f"query parameter '{name}' must be an RFC 3339 date-time, e.g. "
                          "2026-12-01T00:00:00Z") from None
    return value.astimezone(timezone.utc)


_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
