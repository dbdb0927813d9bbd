"""What every pool backend offers: start, deallocate, power state, addresses, provisioning.

Starting or stopping a machine takes minutes, and a function must not wait that long. So every
slow call returns an `Operation`: a small JSON-serialisable handle that an orchestration stores
and hands back to `poll()` after a durable timer. `poll()` looks once and returns at once; for
multi-step work (provisioning: public IP, NIC, VM) it starts the next step and hands back the
handle to poll next.
"""
from __future__ import annotations

import contextlib
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from shared.contracts import PowerState

# Power states a backend reports (declared in `shared.contracts`), as plain strings.
RUNNING, STARTING, STOPPED = (PowerState.RUNNING.value, PowerState.STARTING.value,
                              PowerState.STOPPED.value)
DEALLOCATED, DEALLOCATING, UNKNOWN = (PowerState.DEALLOCATED.value,
                                      PowerState.DEALLOCATING.value, PowerState.UNKNOWN.value)
POWER_STATES = tuple(state.value for state in PowerState)


class BackendError(Exception):
    """A backend call failed; the message says which VM and why."""


class Throttled(BackendError):
    """The backend asked us to slow down; try again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class VmNotFound(BackendError):
    """The backend has no machine of that name."""


class CapacityUnavailable(BackendError):
    """Azure has no capacity (or quota) for the start: spot capacity taken, the size not
    offered in the region or zone. Another member, on-demand, may still start."""


# ARM error codes that say "no capacity for this VM now" rather than "this VM is broken"
# (docs: "Troubleshoot allocation failures", "Use Azure Spot Virtual Machines").
CAPACITY_ERROR_CODES = frozenset({
    "SkuNotAvailable", "OverconstrainedAllocationRequest",
    "OverconstrainedZonalAllocationRequest", "AllocationFailed", "ZonalAllocationFailed",
    "QuotaExceeded", "SpotQuotaExceeded", "LowPriorityQuotaExceeded"})


def is_capacity_error(code: str, message: str = "") -> bool:
    """True for an ARM error that means no capacity. Quota refusals come as the generic
    `OperationNotAllowed` whose message names the quota, so that one code needs its text."""
    if code in CAPACITY_ERROR_CODES:
        return True
    return code == "OperationNotAllowed" and "quota" in message.lower()


class OperationInProgress(BackendError):
    """Another operation on the same VM is still running (e.g. it is already starting)."""


class InvalidOperation(BackendError, ValueError):
    """An operation handle that this backend did not issue or cannot read."""


@dataclass(frozen=True)
class Operation:
    """Handle of a long-running backend operation; store it, poll it later."""

    backend: str                 # which backend issued it
    kind: str                    # start, deallocate, provision, delete, ...
    vm: str
    token: str = ""              # backend-specific continuation (e.g. an ARM poller token)
    step: int = 0                # index of the current step of a multi-step operation
    spec: dict[str, Any] = field(default_factory=dict)  # what multi-step work needs next
    started_at: float = 0.0      # epoch seconds when the current step began

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes | dict[str, Any]) -> Operation:
        try:
            body = text if isinstance(text, dict) else json.loads(text)
            return cls(backend=str(body["backend"]), kind=str(body["kind"]), vm=str(body["vm"]),
                       token=str(body.get("token", "")), step=int(body.get("step", 0)),
                       spec=dict(body.get("spec") or {}),
                       started_at=float(body.get("started_at", 0.0)))
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidOperation(f"not an operation handle: {exc}") from None


@dataclass(frozen=True)
class OperationStatus:
    """The result of one `poll()`: done or not, and the handle to poll next time."""

    operation: Operation
    done: bool
    succeeded: bool = False
    status: str = ""
    error: str = ""
    capacity: bool = False  # it failed for lack of capacity (see `CapacityUnavailable`)


def now_s() -> float:
    return time.time()


class PoolBackend(ABC):
    """A way to run pool VMs. Implementations raise the errors above, never SDK errors."""

    name: str = "base"
    manages_power: bool = True  # False: something else starts and stops the machines

    @abstractmethod
    def start(self, vm: str) -> Operation:
        """Ask for `vm` to start; return without waiting for it."""

    @abstractmethod
    def deallocate(self, vm: str) -> Operation:
        """Ask for `vm` to stop and release its compute; return without waiting."""

    @abstractmethod
    def power_state(self, vm: str) -> str:
        """One of `POWER_STATES`."""

    @abstractmethod
    def addresses(self, vm: str) -> dict[str, str | None]:
        """`{"private_ip": ..., "public_ip": ...}` (None where the VM has none)."""

    @abstractmethod
    def provision(self, spec: dict[str, Any]) -> Operation:
        """Begin creating a new pool VM from `spec` (at least `{"name": ...}`)."""

    @abstractmethod
    def delete(self, vm: str) -> Operation:
        """Begin deleting `vm` and what was created for it."""

    @abstractmethod
    def poll(self, operation: Operation) -> OperationStatus:
        """Look once at `operation`; never blocks for long."""

    @contextlib.contextmanager
    def one_pass(self) -> Iterator[None]:
        """One scaler pass: a backend may answer `power_state` from one look at all its
        machines for the length of the block (the azure backend lists them once). The default
        looks at each machine when asked."""
        yield

    def stopped_at(self, vm: str) -> float | None:
        """When (epoch seconds) the machine last stopped, if the backend keeps that record;
        the pool's billing then ends there instead of when the scaler noticed."""
        return None

    def _check_own(self, operation: Operation) -> None:
        if operation.backend != self.name:
            raise InvalidOperation(
                f"operation of backend {operation.backend!r} given to backend {self.name!r}")
