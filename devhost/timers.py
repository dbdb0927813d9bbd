"""Timer triggers: six-field NCRONTAB (seconds first) or a TimeSpan, with schedule monitoring.

With `useMonitor` (the default) the last and next occurrence are kept in the blob
`azure-webjobs-hosts/timers/{hostId}/{function}/status`, so a host that was down when an
occurrence was due fires once at start with `past_due` set, as the real host does.
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.functions import meta
from azure.functions.timer import TimerRequestConverter
from cronsim import CronSim, CronSimError

from devhost.config import TIMESPAN_RE, parse_timespan
from devhost.errors import ConfigError, InvocationError
from devhost.invoker import Invoker
from devhost.loader import FunctionSpec

log = logging.getLogger("devhost")
HOSTS_CONTAINER = "azure-webjobs-hosts"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _parse(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


class Schedule:
    """Next occurrence after a moment, for NCRONTAB or TimeSpan schedules (UTC)."""

    def __init__(self, expression: str, function_name: str) -> None:
        self.expression = expression.strip()
        self.interval: timedelta | None = None
        if TIMESPAN_RE.match(self.expression):
            self.interval = parse_timespan(self.expression, f"{function_name} schedule")
            if self.interval <= timedelta(0):
                raise ConfigError(f"function {function_name}: schedule interval must be > 0")
            return
        if len(self.expression.split()) != 6:
            raise ConfigError(f"function {function_name}: schedule {expression!r} must have six"
                              " NCRONTAB fields (seconds first) or be a TimeSpan")
        try:
            CronSim(self.expression, _utcnow())
        except CronSimError as exc:
            raise ConfigError(f"function {function_name}: schedule {expression!r}: {exc}"
                              ) from None

    def next_after(self, moment: datetime) -> datetime:
        if self.interval is not None:
            return moment + self.interval
        return next(CronSim(self.expression, moment.replace(microsecond=0)))


@dataclass
class TimerStatus:
    last: datetime | None
    next: datetime | None
    last_updated: datetime | None

    def to_json(self) -> dict[str, str | None]:
        return {"Last": _iso(self.last), "Next": _iso(self.next),
                "LastUpdated": _iso(self.last_updated)}


class TimerRunner:
    """Runs one timer function until `stop` is set; invocations never overlap."""

    def __init__(self, spec: FunctionSpec, invoker: Invoker, host_id: str,
                 stop: asyncio.Event) -> None:
        self.spec = spec
        self.invoker = invoker
        self.stop = stop
        self.schedule = Schedule(str(spec.trigger.get("schedule", "")), spec.name)
        self.run_on_startup = bool(spec.trigger.get("runOnStartup", False))
        self.monitor = bool(spec.trigger.get("useMonitor", True))
        self.status_blob = f"timers/{host_id}/{spec.name}/status"
        self.connection = None  # the host's storage (AzureWebJobsStorage)

    def _blob(self) -> Any:
        return self.invoker.storage.blob_service(self.connection).get_blob_client(
            HOSTS_CONTAINER, self.status_blob)

    def _load_status(self) -> TimerStatus | None:
        try:
            raw = self._blob().download_blob().readall()
        except ResourceNotFoundError:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            log.warning("timer %s: unreadable status blob ignored", self.spec.name)
            return None
        if not isinstance(data, dict):
            return None
        return TimerStatus(_parse(data.get("Last")), _parse(data.get("Next")),
                           _parse(data.get("LastUpdated")))

    def _save_status(self, status: TimerStatus) -> None:
        service = self.invoker.storage.blob_service(self.connection)
        try:
            service.create_container(HOSTS_CONTAINER)
        except ResourceExistsError:
            pass
        self._blob().upload_blob(json.dumps(status.to_json()), overwrite=True)

    async def run(self) -> None:
        status = await self.invoker.io(self._load_status) if self.monitor else None
        now = _utcnow()
        if status is not None and status.next is not None and now > status.next:
            log.info("timer %s: past due (was due %s)", self.spec.name, _iso(status.next))
            status = await self._fire(True, now, status)
        elif self.run_on_startup:
            status = await self._fire(False, now, status)
        while not self.stop.is_set():
            due = self.schedule.next_after(_utcnow())
            delay = (due - _utcnow()).total_seconds()
            if delay > 0:
                try:
                    await asyncio.wait_for(self.stop.wait(), delay)
                    return
                except asyncio.TimeoutError:
                    pass
            status = await self._fire(False, due, status)

    async def _fire(self, past_due: bool, scheduled: datetime,
                    status: TimerStatus | None) -> TimerStatus:
        upcoming = self.schedule.next_after(max(scheduled, _utcnow()))
        request = {
            "Schedule": {"AdjustForDST": True},
            "ScheduleStatus": status.to_json() if status else None,
            "IsPastDue": past_due,
        }
        value = TimerRequestConverter.decode(meta.Datum(json.dumps(request), "json"),
                                             trigger_metadata=None)
        reason = "Timer fired at " + scheduled.isoformat()
        try:
            await self.invoker.invoke(self.spec, value, {}, reason)
        except InvocationError:
            pass  # already logged; the schedule goes on, as on the real host
        new_status = TimerStatus(scheduled, upcoming, _utcnow())
        if self.monitor:
            try:
                await self.invoker.io(self._save_status, new_status)
            except Exception as exc:  # noqa: BLE001 - storage trouble must not stop the timer
                log.warning("timer %s: could not save status: %s", self.spec.name, exc)
        return new_status
