"""The `external` backend: something else (KEDA on Kubernetes, an operator) runs the agents.

The app never starts or stops machines here. A VM counts as running while its agent heartbeats
(recently, by `heartbeat_timeout_s`), so the scaler and the API still see which agents are alive;
start and deallocate are accepted and complete at once without touching anything.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from shared.clock import utcnow
from shared.pool.backends.base import (
    DEALLOCATED,
    RUNNING,
    InvalidOperation,
    Operation,
    OperationStatus,
    PoolBackend,
    VmNotFound,
    now_s,
)
from shared.pool.registry import PoolRegistry, UnknownVm


class ExternalBackend(PoolBackend):
    name = "external"
    manages_power = False

    def __init__(self, registry: PoolRegistry, heartbeat_timeout_s: float = 300.0) -> None:
        self.registry = registry
        self.heartbeat_timeout = timedelta(seconds=heartbeat_timeout_s)

    def _record(self, vm: str):
        try:
            return self.registry.get(vm)
        except UnknownVm as exc:
            raise VmNotFound(str(exc)) from None

    def start(self, vm: str) -> Operation:
        self._record(vm)
        return Operation(self.name, "start", vm, started_at=now_s())

    def deallocate(self, vm: str) -> Operation:
        self._record(vm)
        return Operation(self.name, "deallocate", vm, started_at=now_s())

    def power_state(self, vm: str, now: datetime | None = None) -> str:
        beat = self._record(vm).last_heartbeat
        now = now or utcnow()
        return RUNNING if beat is not None and now - beat < self.heartbeat_timeout else DEALLOCATED

    def addresses(self, vm: str) -> dict[str, str | None]:
        rec = self._record(vm)
        return {"private_ip": rec.private_ip or None, "public_ip": rec.public_ip or None}

    def provision(self, spec: dict[str, Any]) -> Operation:
        name = spec.get("name") if isinstance(spec, dict) else None
        if not isinstance(name, str):
            raise InvalidOperation("provision needs a VM name")
        return Operation(self.name, "provision", name, started_at=now_s())

    def delete(self, vm: str) -> Operation:
        return Operation(self.name, "delete", vm, started_at=now_s())

    def poll(self, operation: Operation) -> OperationStatus:
        self._check_own(operation)
        return OperationStatus(operation, done=True, succeeded=True, status="Succeeded")
