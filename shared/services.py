"""The one place that builds what a process works with: storage clients, stores, the scaler.

Functions run many invocations per process; building SDK clients (and their HTTP pipelines)
per call wastes time and connections, so they are built lazily, once, and reused. Everything
else takes them from here, so the pool registry a change is validated against is the one the
scaler then changes.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import cached_property
from itertools import islice
from typing import Any

from azure.core.exceptions import HttpResponseError
from azure.data.tables import TableClient
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient

from shared.claims import ClaimStore
from shared.coalesce import PassCoalescer
from shared.eventlog import EventLog, RecentTimes
from shared.idempotency import IdempotencyStore
from shared.issued import IssuedItems
from shared.jobs import JobStore
from shared.pool.registry import PoolRegistry
from shared.pool.scaler import Scaler, sync_members
from shared.settings import Settings
from shared.storage import StorageConnection, ensure_resources
from shared.webhooks import Deliveries, WebhookPolicy

log = logging.getLogger(__name__)
ARRIVAL_WINDOW_S = 600.0  # the policy's arrival-rate window
WAITING_FILES_LIMIT = 200  # the most one count lists: a page of names is costly to parse


@dataclass
class Services:
    settings: Settings
    connection: StorageConnection
    _tables: dict[str, TableClient] = field(default_factory=dict, repr=False)
    _scaler: Scaler | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _coalescer: PassCoalescer | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Services:
        settings = Settings.from_env(env)
        return cls(settings, StorageConnection.from_env(settings.storage_connection, env))

    def table(self, name: str) -> TableClient:
        if name not in self._tables:
            self._tables[name] = self.connection.table_service().get_table_client(name)
        return self._tables[name]

    @cached_property
    def blobs(self) -> BlobServiceClient:
        return self.connection.blob_service()

    @cached_property
    def work_queue(self) -> QueueClient:
        return self.connection.queue(self.settings.work_queue)

    @cached_property
    def jobs(self) -> JobStore:
        return JobStore(self.table(self.settings.result_table))

    @cached_property
    def log(self) -> EventLog:
        return EventLog(self.table(self.settings.log_table))

    @cached_property
    def issued(self) -> IssuedItems:
        return IssuedItems(self.table(self.settings.result_table))

    @cached_property
    def claims(self) -> ClaimStore:
        return ClaimStore(self.table(self.settings.claim_table),
                          stale_after=timedelta(seconds=self.settings.heartbeat_timeout_seconds))

    @cached_property
    def idempotency(self) -> IdempotencyStore:
        return IdempotencyStore(
            self.table(self.settings.idempotency_table),
            timedelta(seconds=self.settings.idempotency_retention_seconds))

    @cached_property
    def webhook_policy(self) -> WebhookPolicy:
        s = self.settings
        return WebhookPolicy(s.webhook_signing_key, s.webhook_allow_hosts,
                             s.webhook_max_attempts, s.webhook_backoff_seconds)

    @cached_property
    def deliveries(self) -> Deliveries:
        return Deliveries(self.table(self.settings.webhook_table))

    @cached_property
    def registry(self) -> PoolRegistry:
        return PoolRegistry(self.table(self.settings.vm_table))

    @property
    def scaler(self) -> Scaler:
        """The process's scaler, over this registry, claim store and work queue; the members
        of `POOL_VMS` are synced when it is built."""
        with self._lock:
            if self._scaler is None:
                scaler = Scaler.from_services(self)
                scaler.arrival_times = RecentTimes(self.log, "work.issued", ARRIVAL_WINDOW_S)
                scaler.waiting_files = self.count_waiting_files
                self.sync_members(scaler)
                self._scaler = scaler
            return self._scaler

    def capacity_passes(self, run: Callable[[str], Any], min_interval_s: float
                        ) -> PassCoalescer:
        """The process's coalescer of event-driven scaler passes (made on first use)."""
        with self._lock:
            if self._coalescer is None:
                self._coalescer = PassCoalescer(run, min_interval_s)
            return self._coalescer

    def count_waiting_files(self, limit: int = WAITING_FILES_LIMIT) -> int:
        """Blobs that arrived in the data container lately, in the first `limit` listed. Only
        recent ones count: a file stuck there for longer is the sweeper's, not work on its
        way, and must not keep VMs up."""
        limit = max(1, min(limit, WAITING_FILES_LIMIT))
        blobs = self.blobs.get_container_client(self.settings.data_container).list_blobs(
            results_per_page=limit)
        since = datetime.now(timezone.utc) - timedelta(seconds=ARRIVAL_WINDOW_S)
        return sum(1 for blob in islice(blobs, limit) if blob.last_modified >= since)

    def sync_members(self, scaler: Scaler | None = None) -> list[str]:
        """Give every VM of `POOL_VMS` and `POOL_SPOT_VMS` a row; returns the names newly
        added."""
        scaler = scaler or self.scaler
        return sync_members(self.registry, self.settings.pool_vms, self.settings.vm_slots,
                            scaler.backend, self.settings.pool_spot_vms)


_services: Services | None = None


def get_services() -> Services:
    """The process-wide services, built from the environment on first use.

    The first use also creates any missing container, queue or table (idempotent), so a fresh
    storage account or a new slot's task hub works without a separate set-up step.
    """
    global _services
    if _services is None:
        services = Services.from_env()
        try:
            ensure_resources(services.settings, services.connection)
        except HttpResponseError as exc:  # e.g. an identity allowed to use but not create
            log.warning("could not create storage resources: %s", exc.message)
        _services = services
    return _services
