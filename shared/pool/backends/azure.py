"""The `azure` backend: pool VMs are Azure VMs in one resource group.

Uses azure-mgmt-compute (start, deallocate, instance view), azure-mgmt-network (NIC and public
IP addresses; provisioning creates them before the VM) and azure-identity. Within one scaler
pass (`one_pass`), power states come from one listing of the resource group's VMs with their
instance views instead of one request per VM: ARM limits reads per subscription. Long-running ARM
operations are never waited on: the first request is sent, and the poller's continuation token
goes into the returned `Operation`. `poll()` rebuilds the poller from that token and makes one
status request, so a durable orchestration can poll with timers between looks instead of keeping
a thread (or a function) busy for minutes.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlparse

from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceNotFoundError,
)
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.core.polling import LROPoller
from azure.core.polling.base_polling import BadResponse, BadStatus, OperationFailed
from azure.mgmt.core.polling.arm_polling import ARMPolling
from azure.mgmt.core.tools import parse_resource_id

from shared.pool.backends.base import (
    DEALLOCATED,
    DEALLOCATING,
    RUNNING,
    STARTING,
    STOPPED,
    UNKNOWN,
    BackendError,
    CapacityUnavailable,
    InvalidOperation,
    Operation,
    OperationInProgress,
    OperationStatus,
    PoolBackend,
    Throttled,
    VmNotFound,
    is_capacity_error,
    now_s,
)
from shared.pool.members import InvalidVmName, validate_vm_name
from shared.pool.vmspec import AgentVmSettings, vm_body
from shared.pool.vmspec import profile as vm_profile
from shared.settings import SettingError

_POWER = {"running": RUNNING, "starting": STARTING, "stopped": STOPPED, "stopping": STOPPED,
          "deallocated": DEALLOCATED, "deallocating": DEALLOCATING}
_FINISHED = {"succeeded", "failed", "canceled", "cancelled"}
PROVISION_FIELDS = ("location", "vm_size", "image", "subnet_id", "admin_username",
                    "ssh_public_key")
# The API's camelCase names for the same fields (a pool change's `spec`).
_SPEC_ALIASES = {"size": "vm_size", "vmSize": "vm_size", "subnetId": "subnet_id",
                 "publicIp": "public_ip", "adminUsername": "admin_username",
                 "sshPublicKey": "ssh_public_key", "maxPrice": "max_price"}


class ProvisionSpecError(BackendError, ValueError):
    """A provisioning request lacks a field or has a malformed one."""


class _AllowLoopbackHttp(SansIOHTTPPolicy):
    """Let bearer tokens go over plain http to a loopback ARM endpoint (local fakes, tests).

    azure-core refuses http for token authentication unless a request opts out with the
    `enforce_https=False` option; this sets that option, and only for 127.0.0.0/8 and ::1.
    """

    def on_request(self, request: Any) -> None:
        if _is_loopback(request.http_request.url):
            request.context.options["enforce_https"] = False


def _is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _LookOnce(ARMPolling):
    """ARM polling that never loops: `run` does nothing, the caller calls `update_status`.

    It keeps the last status response it saw through azure-core's public per-request
    `raw_response_hook` (its operation options go with every status request), so a failed
    operation's ARM error can be read without the polling method's private state.
    """

    def __init__(self, timeout: float, **kwargs: Any) -> None:
        self.last_response: Any = None
        super().__init__(timeout, raw_response_hook=self._remember, **kwargs)

    def _remember(self, pipeline_response: Any) -> None:
        self.last_response = pipeline_response.http_response

    def run(self) -> None:
        return None

    def error_text(self) -> str:
        """The ARM error of a failed operation, from the last status response."""
        try:
            body = json.loads(self.last_response.text() or "{}")
        except (ValueError, AttributeError):
            return ""
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            return f"{error.get('code', '')}: {error.get('message', '')}".strip(": ")
        return ""


def _retry_after(exc: HttpResponseError) -> float | None:
    headers = getattr(exc.response, "headers", None) or {}
    raw = headers.get("Retry-After") or headers.get("retry-after")
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


class AzureBackend(PoolBackend):
    """Pool VMs in `resource_group` of `subscription_id`."""

    name = "azure"

    def __init__(self, subscription_id: str, resource_group: str, credential: Any = None,
                 arm_endpoint: str = "", provisioning: Mapping[str, Any] | None = None,
                 polling_interval: float = 30.0, agent: AgentVmSettings | None = None,
                 **client_options: Any) -> None:
        from azure.mgmt.compute import ComputeManagementClient  # noqa: PLC0415 - heavy imports
        from azure.mgmt.network import NetworkManagementClient  # noqa: PLC0415

        if not subscription_id:
            raise SettingError("AZURE_SUBSCRIPTION_ID", "is required for the azure pool backend")
        if not resource_group:
            raise SettingError("POOL_RESOURCE_GROUP", "is required for the azure pool backend")
        if arm_endpoint and not arm_endpoint.startswith("https://") and not _is_loopback(
                arm_endpoint):
            raise SettingError("ARM_ENDPOINT", "must be an https URL (plain http only on loopback)")
        if credential is None:
            from azure.identity import DefaultAzureCredential  # noqa: PLC0415

            credential = DefaultAzureCredential()
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self.base_url = (arm_endpoint or "https://management.azure.com").rstrip("/")
        self.provisioning = dict(provisioning or {})
        self.agent = agent  # what a provisioned VM's agent needs (its userData)
        self.polling_interval = polling_interval
        # One scaler pass (`one_pass`): VM name -> power state from one listing, taken when
        # first needed; VMs acted on since are read on their own again.
        self._passes = 0
        self._listing: dict[str, str] | None = None
        self._listing_error: BackendError | None = None
        self._acted_on: set[str] = set()
        self.list_expand_refused = False  # ARM would not expand the listing: read per VM

        def options() -> dict[str, Any]:
            opts = dict(client_options)
            if arm_endpoint and _is_loopback(arm_endpoint):
                opts["per_call_policies"] = [_AllowLoopbackHttp()]
            return opts

        base = arm_endpoint or None
        # Tokens for the ARM this backend talks to: a sovereign cloud's endpoint is also its
        # token audience, so the public cloud's default scope would earn a 401 there.
        scopes = [f"{self.base_url}/.default"]
        self.compute = ComputeManagementClient(credential, subscription_id, base_url=base,
                                               polling_interval=polling_interval,
                                               credential_scopes=scopes, **options())
        self.network = NetworkManagementClient(credential, subscription_id, base_url=base,
                                               polling_interval=polling_interval,
                                               credential_scopes=scopes, **options())

    # --- helpers -----------------------------------------------------------------------------

    def _polling(self) -> _LookOnce:
        return _LookOnce(self.polling_interval, path_format_arguments={"endpoint": self.base_url})

    @contextlib.contextmanager
    def _errors(self, vm: str, what: str, subject: str = "") -> Iterator[None]:
        """Turn SDK errors into the backend's error types, naming the VM (or `subject`) and the
        action."""
        subject = subject or f"VM {vm!r}"
        try:
            yield
        except ResourceNotFoundError:
            raise VmNotFound(f"{subject} was not found in resource group "
                             f"{self.resource_group!r} ({what})") from None
        except HttpResponseError as exc:
            status = exc.status_code
            code = getattr(exc.error, "code", None) or ""
            detail = getattr(exc.error, "message", None) or exc.reason or ""
            text = f"{what} {subject}: HTTP {status} {code} {detail}".strip()
            if is_capacity_error(code, detail):
                raise CapacityUnavailable(f"no capacity to {text}") from None
            if status == 429:
                raise Throttled(f"throttled by Azure: {text}", _retry_after(exc)) from None
            if status == 409:
                raise OperationInProgress(f"another operation is in progress: {text}") from None
            raise BackendError(f"failed to {text}") from None
        except (BadStatus, BadResponse, OperationFailed) as exc:
            raise BackendError(f"failed to {what} {subject}: {exc}") from None
        except AzureError as exc:
            raise BackendError(f"failed to {what} {subject}: {exc.message}") from None

    def _resource_id(self, provider: str, kind: str, name: str) -> str:
        return (f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
                f"/providers/{provider}/{kind}/{name}")

    def backend_id(self, vm: str) -> str:
        """The Azure resource id of pool VM `vm` (what the registry stores)."""
        return self._resource_id("Microsoft.Compute", "virtualMachines", vm)

    # --- start / stop / look ---------------------------------------------------------------

    def start(self, vm: str) -> Operation:
        vm = _valid(vm)
        self._acted_on.add(vm)
        with self._errors(vm, "start"):
            poller = self.compute.virtual_machines.begin_start(
                self.resource_group, vm, polling=self._polling())
            return Operation(self.name, "start", vm, token=poller.continuation_token(),
                             started_at=now_s())

    def deallocate(self, vm: str) -> Operation:
        vm = _valid(vm)
        self._acted_on.add(vm)
        with self._errors(vm, "deallocate"):
            poller = self.compute.virtual_machines.begin_deallocate(
                self.resource_group, vm, polling=self._polling())
            return Operation(self.name, "deallocate", vm, token=poller.continuation_token(),
                             started_at=now_s())

    @contextlib.contextmanager
    def one_pass(self) -> Iterator[None]:
        """Power states for the pass come from one listing (taken at the first `power_state`),
        except for VMs started, deallocated, provisioned or deleted since, or whose operation
        finished since: those are read on their own, so what the pass does next is not decided
        on a stale look. Nested passes share the outer one's listing."""
        self._passes += 1
        try:
            yield
        finally:
            self._passes -= 1
            if not self._passes:
                self._listing, self._listing_error = None, None
                self._acted_on.clear()

    def _listed_power(self) -> dict[str, str] | None:
        """VM name -> power state of every VM in the resource group (one paged list request
        with `$expand=instanceView`), for the current pass; None when ARM will not expand it."""
        if self._listing is not None:
            return self._listing
        if self._listing_error is not None:  # the pass's listing failed: do not ask N times
            raise self._listing_error
        listing: dict[str, str] = {}
        try:
            with self._errors("", "list the VMs with their power states in",
                              subject=f"resource group {self.resource_group!r}"):
                try:
                    for machine in self.compute.virtual_machines.list(self.resource_group,
                                                                      expand="instanceView"):
                        if machine.instance_view is None:  # the expansion was ignored
                            self.list_expand_refused = True
                            return None
                        listing[machine.name] = _power_of(machine.instance_view.statuses)
                except HttpResponseError as exc:
                    # The API documents the expansion for lists filtered to a scale set; if
                    # it is refused (400), read VM by VM, as outside a pass, from now on.
                    if exc.status_code != 400:
                        raise
                    self.list_expand_refused = True
                    return None
        except BackendError as exc:
            self._listing_error = exc
            raise
        self._listing = listing
        return listing

    def power_state(self, vm: str) -> str:
        vm = _valid(vm)
        if self._passes and not self.list_expand_refused and vm not in self._acted_on:
            listing = self._listed_power()
            if listing is not None:
                if vm not in listing:
                    raise VmNotFound(f"VM {vm!r} was not found in resource group "
                                     f"{self.resource_group!r} (listing its VMs)")
                return listing[vm]
        with self._errors(vm, "read the power state of"):
            view = self.compute.virtual_machines.instance_view(self.resource_group, vm)
        return _power_of(view.statuses)

    def addresses(self, vm: str) -> dict[str, str | None]:
        """Private and public IP of the VM's primary NIC (VM -> NIC -> public IP resource)."""
        vm = _valid(vm)
        with self._errors(vm, "read the addresses of"):
            machine = self.compute.virtual_machines.get(self.resource_group, vm)
            refs = list((machine.network_profile.network_interfaces or [])
                        if machine.network_profile else [])
            if not refs:
                return {"private_ip": None, "public_ip": None}
            ref = next((r for r in refs if r.primary), refs[0])
            nic_id = parse_resource_id(ref.id)
            nic = self.network.network_interfaces.get(nic_id["resource_group"], nic_id["name"])
            configs = list(nic.ip_configurations or [])
            if not configs:
                return {"private_ip": None, "public_ip": None}
            config = next((c for c in configs if c.primary), configs[0])
            public = None
            if config.public_ip_address is not None and config.public_ip_address.id:
                pip_id = parse_resource_id(config.public_ip_address.id)
                pip = self.network.public_ip_addresses.get(pip_id["resource_group"],
                                                           pip_id["name"])
                public = pip.ip_address
            return {"private_ip": config.private_ip_address, "public_ip": public}

    # --- provisioning ------------------------------------------------------------------------

    def provision_spec(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """`spec` over the configured defaults, checked; raises `ProvisionSpecError`."""
        given = {_SPEC_ALIASES.get(k, k): v for k, v in spec.items() if v not in (None, "")}
        merged = {**self.provisioning, **given}
        try:
            merged["name"] = validate_vm_name(merged.get("name"))
        except InvalidVmName as exc:
            raise ProvisionSpecError(str(exc)) from None
        missing = [f for f in PROVISION_FIELDS if not merged.get(f)]
        if missing:
            raise ProvisionSpecError(f"cannot provision VM {merged['name']!r}: missing "
                                     f"{', '.join(missing)}")
        # A VM whose agent cannot start would only cost money: refuse before creating anything.
        lacking = self.agent.missing() if self.agent is not None else ["POOL_VM_IDENTITY_ID",
                                                                       "POOL_AGENT_* settings"]
        if lacking:
            raise ProvisionSpecError(f"cannot provision VM {merged['name']!r}: its agent needs "
                                     f"{', '.join(lacking)}")
        merged["public_ip"] = bool(merged.get("public_ip"))
        merged["priority"] = str(merged.get("priority") or "regular")
        if merged["priority"] not in ("regular", "spot"):
            raise ProvisionSpecError("priority must be regular or spot")
        try:
            merged["max_price"] = float(merged.get("max_price", -1.0))
        except (TypeError, ValueError):
            raise ProvisionSpecError("maxPrice must be a number (-1: up to on-demand)") from None
        if not (merged["max_price"] == -1 or 0 < merged["max_price"] <= 10000):
            raise ProvisionSpecError("maxPrice must be -1 or a price from 0 to 10000 per hour")
        image = str(merged["image"])
        if not image.startswith("/") and image.count(":") != 3:
            raise ProvisionSpecError("image must be publisher:offer:sku:version or a resource id")
        tags = merged.get("tags") or {}
        if not isinstance(tags, dict):
            raise ProvisionSpecError("tags must be an object")
        merged["tags"] = {str(k): str(v) for k, v in tags.items()}
        return merged

    def _provision_steps(self, spec: Mapping[str, Any]) -> list[str]:
        return (["public_ip"] if spec.get("public_ip") else []) + ["nic", "vm"]

    def _begin_provision_step(self, spec: Mapping[str, Any], step: str) -> LROPoller:
        name, location, tags = spec["name"], spec["location"], spec.get("tags") or {}
        rg = self.resource_group
        pip_name, nic_name = f"{name}-pip", f"{name}-nic"
        if step == "public_ip":
            body = {"location": location, "tags": tags, "sku": {"name": "Standard"},
                    "properties": {"publicIPAllocationMethod": "Static"}}
            return self.network.public_ip_addresses.begin_create_or_update(
                rg, pip_name, body, polling=self._polling())
        if step == "nic":
            ip_config: dict[str, Any] = {"subnet": {"id": spec["subnet_id"]},
                                         "privateIPAllocationMethod": "Dynamic"}
            if spec.get("public_ip"):
                ip_config["publicIPAddress"] = {
                    "id": self._resource_id("Microsoft.Network", "publicIPAddresses", pip_name)}
            body = {"location": location, "tags": tags, "properties": {
                **vm_profile()["nic"],
                "ipConfigurations": [{"name": "ipconfig1", "properties": ip_config}]}}
            return self.network.network_interfaces.begin_create_or_update(
                rg, nic_name, body, polling=self._polling())
        image = str(spec["image"])
        if image.startswith("/"):
            image_ref: dict[str, Any] = {"id": image}
        else:
            publisher, offer, sku, version = image.split(":")
            image_ref = {"publisher": publisher, "offer": offer, "sku": sku, "version": version}
        if self.agent is None:  # provision_spec refuses this earlier
            raise ProvisionSpecError(f"VM {name!r}: no agent settings")
        body = vm_body(name=name, location=location, tags=tags, vm_size=spec["vm_size"],
                       image_ref=image_ref, admin_username=spec["admin_username"],
                       ssh_public_key=spec["ssh_public_key"],
                       nic_id=self._resource_id("Microsoft.Network", "networkInterfaces",
                                                nic_name),
                       agent=self.agent, spot=spec.get("priority") == "spot",
                       max_price=float(spec.get("max_price", -1.0)))
        return self.compute.virtual_machines.begin_create_or_update(
            rg, name, body, polling=self._polling())

    def provision(self, spec: dict[str, Any]) -> Operation:
        """Create public IP (optional), NIC, then VM; returns the first step's operation."""
        full = self.provision_spec(spec)
        self._acted_on.add(full["name"])
        step = self._provision_steps(full)[0]
        with self._errors(full["name"], f"provision ({step})"):
            poller = self._begin_provision_step(full, step)
        return Operation(self.name, "provision", full["name"], token=poller.continuation_token(),
                         step=0, spec=full, started_at=now_s())

    _DELETE_STEPS = ("vm", "nic", "public_ip")

    def _begin_delete_step(self, vm: str, step: str) -> LROPoller:
        rg = self.resource_group
        if step == "vm":
            return self.compute.virtual_machines.begin_delete(rg, vm, polling=self._polling())
        if step == "nic":
            return self.network.network_interfaces.begin_delete(rg, f"{vm}-nic",
                                                                polling=self._polling())
        return self.network.public_ip_addresses.begin_delete(rg, f"{vm}-pip",
                                                             polling=self._polling())

    def delete(self, vm: str) -> Operation:
        """Delete the VM, then its NIC and public IP (missing ones are skipped)."""
        vm = _valid(vm)
        self._acted_on.add(vm)
        with self._errors(vm, "delete"):
            poller = self._begin_delete_step(vm, "vm")
        return Operation(self.name, "delete", vm, token=poller.continuation_token(), step=0,
                         started_at=now_s())

    # --- polling -------------------------------------------------------------------------

    def _resume(self, op: Operation) -> LROPoller:
        """Rebuild the SDK poller of `op` from its continuation token (no request is sent)."""
        rg, vm, token, polling = self.resource_group, op.vm, op.token, self._polling()
        machines = self.compute.virtual_machines
        resumers: dict[tuple[str, str], Callable[[], LROPoller]] = {
            ("start", ""): lambda: machines.begin_start(
                rg, vm, continuation_token=token, polling=polling),
            ("deallocate", ""): lambda: machines.begin_deallocate(
                rg, vm, continuation_token=token, polling=polling),
            ("provision", "public_ip"): lambda: self.network.public_ip_addresses
            .begin_create_or_update(rg, f"{vm}-pip", None, continuation_token=token,
                                    polling=polling),
            ("provision", "nic"): lambda: self.network.network_interfaces
            .begin_create_or_update(rg, f"{vm}-nic", None, continuation_token=token,
                                    polling=polling),
            ("provision", "vm"): lambda: machines.begin_create_or_update(
                rg, vm, None, continuation_token=token, polling=polling),
            ("delete", "vm"): lambda: machines.begin_delete(
                rg, vm, continuation_token=token, polling=polling),
            ("delete", "nic"): lambda: self.network.network_interfaces.begin_delete(
                rg, f"{vm}-nic", continuation_token=token, polling=polling),
            ("delete", "public_ip"): lambda: self.network.public_ip_addresses.begin_delete(
                rg, f"{vm}-pip", continuation_token=token, polling=polling),
        }
        key = (op.kind, self._step_name(op))
        if key not in resumers or not token:
            raise InvalidOperation(f"cannot poll azure operation {op.kind!r} step {op.step}")
        try:
            return resumers[key]()
        except ValueError as exc:  # a token this SDK cannot read
            raise InvalidOperation(f"bad continuation token for {op.kind} of {vm!r}: "
                                   f"{exc}") from None

    def _step_name(self, op: Operation) -> str:
        if op.kind == "provision":
            steps = self._provision_steps(op.spec)
        elif op.kind == "delete":
            steps = list(self._DELETE_STEPS)
        else:
            return ""
        if not 0 <= op.step < len(steps):
            raise InvalidOperation(f"operation step {op.step} out of range for {op.kind}")
        return steps[op.step]

    def _next_step(self, op: Operation) -> Operation | None:
        """Begin the step after `op`'s (provision/delete); None when there is none."""
        if op.kind == "provision":
            steps = self._provision_steps(op.spec)
            if op.step + 1 >= len(steps):
                return None
            with self._errors(op.vm, f"provision ({steps[op.step + 1]})"):
                poller = self._begin_provision_step(op.spec, steps[op.step + 1])
            return Operation(self.name, op.kind, op.vm, token=poller.continuation_token(),
                             step=op.step + 1, spec=op.spec, started_at=now_s())
        if op.kind == "delete":
            for index in range(op.step + 1, len(self._DELETE_STEPS)):
                try:
                    with self._errors(op.vm, f"delete ({self._DELETE_STEPS[index]})"):
                        poller = self._begin_delete_step(op.vm, self._DELETE_STEPS[index])
                except VmNotFound:
                    continue  # nothing of that kind was created; go on
                return Operation(self.name, op.kind, op.vm, token=poller.continuation_token(),
                                 step=index, started_at=now_s())
        return None

    def poll(self, operation: Operation) -> OperationStatus:
        self._check_own(operation)
        _valid(operation.vm)
        with self._errors(operation.vm, f"poll {operation.kind} of"):
            poller = self._resume(operation)
            method = poller.polling_method()
            if not isinstance(method, _LookOnce):  # pragma: no cover - defensive
                raise InvalidOperation("unexpected polling method")
            if not method.finished():
                method.update_status()
            status = method.status()
        if status.lower() not in _FINISHED:
            return OperationStatus(operation, done=False, status=status)
        self._acted_on.add(operation.vm)  # the listing of this pass may predate the change
        if status.lower() != "succeeded":
            error = method.error_text()
            code, _, message = error.partition(": ")
            return OperationStatus(operation, done=True, succeeded=False, status=status,
                                   error=error or f"{operation.kind} {status}",
                                   capacity=is_capacity_error(code, message))
        following = self._next_step(operation)
        if following is not None:
            return OperationStatus(following, done=False, status="InProgress")
        return OperationStatus(operation, done=True, succeeded=True, status=status)


def _power_of(statuses: Any) -> str:
    """The power state in an instance view's statuses (`PowerState/...`)."""
    for status in statuses or []:
        code = status.code or ""
        if code.startswith("PowerState/"):
            return _POWER.get(code.split("/", 1)[1].lower(), UNKNOWN)
    return UNKNOWN


def _valid(vm: Any) -> str:
    try:
        return validate_vm_name(vm)
    except InvalidVmName as exc:
        raise VmNotFound(str(exc)) from None
