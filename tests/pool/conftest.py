"""Fixtures for the pool tests: a pool registry on Azurite and a local fake of the ARM REST API.

The fake speaks the documented shapes of the endpoints the azure backend uses (VM get and
instanceView with `PowerState/...` statuses, the resource group's VM list with
`$expand=instanceView` as a `VirtualMachineListResult` paged by `nextLink`, start/deallocate as
long-running operations that answer 202 with an `Azure-AsyncOperation` status URL, NIC and
public IP GETs and PUTs, deletes) on 127.0.0.1, so the real azure-mgmt clients are exercised end
to end without Azure.
"""
from __future__ import annotations

import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import pytest
from azure.core.credentials import AccessToken

from shared.pool.registry import PoolRegistry
from shared.pool.vmspec import AgentVmSettings
from shared.settings import Settings
from shared.storage import StorageConnection, ensure_resources
from tests.loopback import serve

SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"
RESOURCE_GROUP = "rg-pool"
LOCATION = "westeurope"
TOKEN = "test-token"


@pytest.fixture()
def registry(settings: Settings, connection: StorageConnection) -> PoolRegistry:
    ensure_resources(settings, connection)
    return PoolRegistry(connection.table_service().get_table_client(settings.vm_table))


# What a provisioned VM's agent gets in these tests (the app's POOL_AGENT_* settings).
SAMPLE_AGENT = AgentVmSettings(
    identity_id=(f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/"
                 "Microsoft.ManagedIdentity/userAssignedIdentities/id-vm"),
    identity_client_id="00000000-0000-0000-0000-00000000c11d",
    package_url="https://stpool.blob.core.windows.net/agent-package/vmpool-agent.tar.gz",
    api_base_url="https://func-pool.azurewebsites.net", function_key="agent-key==;x",
    actions={"process": "cp {input} {output}"},
    blob_uri="https://stpool.blob.core.windows.net",
    queue_uri="https://stpool.queue.core.windows.net",
    table_uri="https://stpool.table.core.windows.net")


class StaticCredential:
    """A TokenCredential that hands out a fixed token (the fake checks it)."""

    def __init__(self) -> None:
        self.calls = 0
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls += 1
        self.scopes.append(scopes)
        return AccessToken(TOKEN, int(time.time()) + 3600)


@dataclass
class FakeOp:
    status: str = "InProgress"
    polls_left: int = 1                 # status GETs answered InProgress before it completes
    on_success: Any = None              # callable run when it completes
    error: dict[str, str] | None = None  # makes it end Failed


@dataclass
class FakeArm:
    """State of the fake: VMs, NICs, public IPs, operations, and every request seen."""

    base_url: str = ""
    vms: dict[str, dict[str, Any]] = field(default_factory=dict)
    nics: dict[str, dict[str, Any]] = field(default_factory=dict)
    pips: dict[str, dict[str, Any]] = field(default_factory=dict)
    operations: dict[str, FakeOp] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    throttles: list[dict[str, Any]] = field(default_factory=list)
    op_polls: int = 1               # InProgress answers before an operation completes
    fail_next: dict[str, dict[str, str]] = field(default_factory=dict)  # action -> ARM error
    # action -> (HTTP status, ARM error): the request itself is refused, as Azure answers an
    # allocation or quota refusal that it can tell at once
    reject_next: dict[str, tuple[int, dict[str, str]]] = field(default_factory=dict)
    list_page_size: int = 0          # VMs per page of the VM list (0: all in one page)
    refuse_list_expand: bool = False  # answer a list with $expand (and no $filter) with 400
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    # Called with (vm name, "running" | "deallocated", the VM's record) when a VM comes up or
    # goes down, so a test can run a machine for it (see tests/e2e/test_azure_mode.py).
    on_power: Any = None
    # Seconds after which an operation ends on its own, as Azure's do whether or not anyone
    # polls them; None: only status polls move it (the unit tests count those).
    op_seconds: float | None = None

    subscription: str = SUBSCRIPTION
    resource_group: str = RESOURCE_GROUP
    token: str = TOKEN
    vm_path: str = (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
                    "/providers/Microsoft.Compute/virtualMachines")

    def backend(self, **options: Any):  # noqa: ANN201 - AzureBackend, imported lazily
        """The azure backend with the real SDK clients pointed at this fake."""
        from shared.pool.backends.azure import AzureBackend  # noqa: PLC0415

        options.setdefault("arm_endpoint", self.base_url)
        options.setdefault("agent", SAMPLE_AGENT)
        options.setdefault("polling_interval", 0)
        options.setdefault("retry_backoff_factor", 0.01)
        return AzureBackend(options.pop("subscription_id", SUBSCRIPTION),
                            options.pop("resource_group", RESOURCE_GROUP),
                            credential=options.pop("credential", StaticCredential()), **options)

    def credential(self) -> StaticCredential:
        return StaticCredential()

    def rid(self, provider: str, kind: str, name: str) -> str:
        return (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/"
                f"{provider}/{kind}/{name}")

    def power(self, name: str, state: str) -> None:
        vm = self.vms.get(name)
        if vm is not None:
            vm["power"] = state
        if self.on_power is not None and state in ("running", "deallocated"):
            self.on_power(name, state, vm or {})

    def add_vm(self, name: str, power: str = "deallocated", private_ip: str = "10.0.0.4",
               public_ip: str | None = "20.50.60.70", user_data: str | None = None) -> None:
        """A VM with a NIC (and a public IP) as provisioning would leave it."""
        pip_id = None
        if public_ip:
            self.pips[f"{name}-pip"] = {"ipAddress": public_ip}
            pip_id = self.rid("Microsoft.Network", "publicIPAddresses", f"{name}-pip")
        config: dict[str, Any] = {"privateIPAddress": private_ip,
                                  "privateIPAllocationMethod": "Dynamic", "primary": True,
                                  "subnet": {"id": self.rid("Microsoft.Network",
                                                            "virtualNetworks", "vnet/subnets/s")}}
        if pip_id:
            config["publicIPAddress"] = {"id": pip_id}
        self.nics[f"{name}-nic"] = {"ipConfigurations": [config]}
        self.vms[name] = {"power": power, "nic": f"{name}-nic", "size": "Standard_D2s_v3",
                          "userData": user_data}

    def throttle(self, fragment: str, times: int = 1, retry_after: str = "1",
                 method: str = "") -> None:
        """Answer the next `times` requests whose path contains `fragment` (`list`: the VM list)
        with 429."""
        self.throttles.append({"fragment": fragment, "left": times, "retry_after": retry_after,
                               "method": method})

    def seen(self, method: str, fragment: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == method and fragment in r["path"]]

    def list_calls(self) -> list[dict[str, Any]]:
        """The GETs of the resource group's VM list (every page)."""
        return [r for r in self.requests if r["method"] == "GET" and r["path"] == self.vm_path]

    def new_operation(self, on_success: Any, error: dict[str, str] | None = None) -> str:
        op_id = f"op-{next(self._ids)}-{uuid.uuid4().hex[:6]}"
        op = self.operations[op_id] = FakeOp(polls_left=self.op_polls, on_success=on_success,
                                             error=error)
        if self.op_seconds is not None:
            timer = threading.Timer(self.op_seconds, self.finish, args=(op,))
            timer.daemon = True
            timer.start()
        return op_id

    def finish(self, op: FakeOp) -> None:
        with self.lock:
            self.end(op)

    @staticmethod
    def end(op: FakeOp) -> None:
        """End an operation still in progress: failed with its error, or succeeded (the lock
        held)."""
        if op.status != "InProgress":
            return
        if op.error:
            op.status = "Failed"
        else:
            op.status = "Succeeded"
            if op.on_success:
                op.on_success()


_PREFIX = re.compile(rf"^/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
                     r"/providers/(?P<provider>Microsoft\.\w+)/(?P<kind>\w+)/(?P<name>[^/]+)"
                     r"(?:/(?P<action>\w+))?$", re.IGNORECASE)
_OPERATION = re.compile(rf"^/subscriptions/{SUBSCRIPTION}/providers/Microsoft\.\w+/locations/"
                        r"\w+/operations/(?P<op>[\w-]+)$")


def _handler(arm: FakeArm) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

        def _send(self, status: int, body: Any = None,
                  headers: dict[str, str] | None = None) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-ms-request-id", str(uuid.uuid4()))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if data:
                self.wfile.write(data)

        def _error(self, status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> None:
            self._send(status, {"error": {"code": code, "message": message}}, headers)

        def _lro(self, status: int, on_success: Any, body: Any = None,
                 error: dict[str, str] | None = None) -> None:
            op_id = arm.new_operation(on_success, error)
            url = (f"{arm.base_url}/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Compute/"
                   f"locations/{LOCATION}/operations/{op_id}?api-version=2026-04-01")
            self._send(status, body, {"Azure-AsyncOperation": url, "Location": url,
                                      "Retry-After": "0"})

        def _handle(self, method: str) -> None:
            parsed = urlparse(self.path)
            query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            with arm.lock:
                arm.requests.append({"method": method, "path": parsed.path, "query": query,
                                     "auth": self.headers.get("Authorization", ""),
                                     "body": json.loads(raw) if raw else None})
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._error(401, "AuthenticationFailed", "missing bearer token")
                if "api-version" not in query:
                    return self._error(400, "MissingApiVersionParameter", "api-version missing")
                for rule in arm.throttles:
                    if rule["left"] > 0 and (rule["fragment"] in parsed.path or (
                            rule["fragment"] == "list" and parsed.path == arm.vm_path)) and (
                            not rule["method"] or rule["method"] == method):
                        rule["left"] -= 1
                        return self._error(429, "TooManyRequests", "Too many requests",
                                           {"Retry-After": rule["retry_after"]})
                op_match = _OPERATION.match(parsed.path)
                if op_match and method == "GET":
                    return self._operation(op_match["op"])
                if parsed.path == arm.vm_path and method == "GET":
                    return self._list(query)
                match = _PREFIX.match(parsed.path)
                if not match:
                    return self._error(404, "NotFound", f"no route for {parsed.path}")
                return self._resource(method, match, query, json.loads(raw) if raw else None)

        def _operation(self, op_id: str) -> None:
            op = arm.operations.get(op_id)
            if op is None:
                return self._error(404, "NotFound", "no such operation")
            if op.status == "InProgress":
                if op.polls_left > 0:
                    op.polls_left -= 1
                else:
                    arm.end(op)
            body: dict[str, Any] = {"name": op_id, "status": op.status,
                                    "startTime": "2026-01-01T00:00:00Z"}
            if op.status == "Failed":
                body["error"] = op.error
            headers = {"Retry-After": "0"} if op.status == "InProgress" else {}
            return self._send(200, body, headers)

        def _vm_body(self, name: str, expand: bool) -> dict[str, Any]:
            vm = arm.vms[name]
            props: dict[str, Any] = {
                "vmId": str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
                "hardwareProfile": {"vmSize": vm["size"]}, "provisioningState": "Succeeded",
                "networkProfile": {"networkInterfaces": [{
                    "id": arm.rid("Microsoft.Network", "networkInterfaces", vm["nic"]),
                    "properties": {"primary": True}}]}}
            if expand:
                props["instanceView"] = self._instance_view(name)
            return {"name": name, "id": arm.rid("Microsoft.Compute", "virtualMachines", name),
                    "type": "Microsoft.Compute/virtualMachines", "location": LOCATION,
                    "properties": props}

        def _list(self, query: dict[str, str]) -> None:
            """VirtualMachines_List: a VirtualMachineListResult, `nextLink` to the next page
            (with the api-version and a skip token, as ARM's links carry them)."""
            expand = query.get("$expand") == "instanceView"
            if expand and arm.refuse_list_expand and "$filter" not in query:
                return self._error(400, "InvalidParameter",
                                   "The value of parameter '$expand' is invalid: it can only be "
                                   "specified with a valid $filter option.")
            names = sorted(arm.vms)
            start = int(query.get("$skiptoken") or 0)
            size = arm.list_page_size or max(1, len(names))
            page = names[start:start + size]
            body: dict[str, Any] = {"value": [self._vm_body(n, expand) for n in page]}
            if start + size < len(names):
                params = {"api-version": query["api-version"], "$skiptoken": str(start + size)}
                if expand:
                    params["$expand"] = "instanceView"
                body["nextLink"] = f"{arm.base_url}{arm.vm_path}?{urlencode(params)}"
            return self._send(200, body)

        def _instance_view(self, name: str) -> dict[str, Any]:
            power = arm.vms[name]["power"]
            return {"computerName": name, "osName": "ubuntu", "statuses": [
                {"code": "ProvisioningState/succeeded", "level": "Info",
                 "displayStatus": "Provisioning succeeded", "time": "2026-01-01T00:00:00Z"},
                {"code": f"PowerState/{power}", "level": "Info",
                 "displayStatus": f"VM {power}"}]}

        def _resource(self, method: str, match: re.Match, query: dict[str, str],
                      body: Any) -> None:
            kind, name, action = match["kind"], match["name"], match["action"]
            if kind == "virtualMachines":
                return self._vm(method, name, action, query, body)
            store = {"networkInterfaces": arm.nics, "publicIPAddresses": arm.pips}.get(kind)
            if store is None or action:
                return self._error(404, "NotFound", f"unsupported {kind}/{action}")
            if method == "GET":
                if name not in store:
                    return self._error(404, "ResourceNotFound",
                                       f"The Resource '{kind}/{name}' was not found.")
                return self._send(200, self._network_body(kind, name))
            if method == "PUT":
                def create() -> None:
                    if kind == "publicIPAddresses":
                        store[name] = {"ipAddress": "20.0.0.9"}
                    else:
                        config = dict(body["properties"]["ipConfigurations"][0]["properties"])
                        config.update({"privateIPAddress": "10.0.0.9", "primary": True})
                        store[name] = {"ipConfigurations": [config]}
                fail = arm.fail_next.pop(f"put:{kind}", None)
                return self._lro(201, create, {"name": name, "location": body.get("location"),
                                               "properties": {"provisioningState": "Updating"}},
                                 error=fail)
            if method == "DELETE":
                if name not in store:
                    return self._send(204)
                return self._lro(202, lambda: store.pop(name, None))
            return self._error(405, "MethodNotAllowed", method)

        def _network_body(self, kind: str, name: str) -> dict[str, Any]:
            item = arm.nics[name] if kind == "networkInterfaces" else arm.pips[name]
            rid = arm.rid("Microsoft.Network", kind, name)
            if kind == "publicIPAddresses":
                return {"name": name, "id": rid, "location": LOCATION,
                        "sku": {"name": "Standard"},
                        "properties": {"ipAddress": item["ipAddress"],
                                       "publicIPAllocationMethod": "Static",
                                       "provisioningState": "Succeeded"}}
            configs = [{"name": f"ipconfig{i + 1}", "id": f"{rid}/ipConfigurations/ipconfig{i + 1}",
                        "properties": c} for i, c in enumerate(item["ipConfigurations"])]
            return {"name": name, "id": rid, "location": LOCATION,
                    "properties": {"provisioningState": "Succeeded", "primary": True,
                                   "ipConfigurations": configs}}

        def _vm(self, method: str, name: str, action: str | None, query: dict[str, str],
                body: Any) -> None:
            if method == "PUT" and not action:
                def create() -> None:
                    nic_id = body["properties"]["networkProfile"]["networkInterfaces"][0]["id"]
                    arm.vms[name] = {"power": "starting", "nic": nic_id.rsplit("/", 1)[1],
                                     "size": body["properties"]["hardwareProfile"]["vmSize"],
                                     "userData": body["properties"].get("userData")}
                    arm.power(name, "running")
                return self._lro(201, create, {"name": name, "location": body.get("location"),
                                               "properties": {"provisioningState": "Creating"}})
            if name not in arm.vms:
                if method == "DELETE":
                    return self._send(204)
                return self._error(404, "ResourceNotFound",
                                   f"The Resource 'Microsoft.Compute/virtualMachines/{name}' "
                                   f"under resource group '{RESOURCE_GROUP}' was not found.")
            vm = arm.vms[name]
            if method == "GET" and not action:
                return self._send(200, self._vm_body(name, query.get("$expand") == "instanceView"))
            if method == "GET" and action == "instanceView":
                return self._send(200, self._instance_view(name))
            if method == "POST" and action in ("start", "deallocate"):
                if vm["power"] in ("starting", "deallocating"):
                    return self._error(
                        409, "OperationNotAllowed",
                        f"Operation '{action}' is not allowed on VM '{name}' since the VM is "
                        f"{vm['power']}; another operation is in progress.")
                rejected = arm.reject_next.pop(action, None)
                if rejected is not None:
                    status, error = rejected
                    return self._error(status, error["code"], error["message"])
                fail = arm.fail_next.pop(action, None)
                if action == "start":
                    vm["power"] = "starting"

                    def done() -> None:
                        arm.power(name, "running")
                else:
                    vm["power"] = "deallocating"

                    def done() -> None:
                        arm.power(name, "deallocated")
                return self._lro(202, done, error=fail)
            if method == "DELETE" and not action:
                def delete() -> None:
                    arm.power(name, "deallocated")
                    arm.vms.pop(name, None)
                return self._lro(202, delete)
            return self._error(405, "MethodNotAllowed", f"{method} {action}")

        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            self._handle("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._handle("POST")

        def do_PUT(self) -> None:  # noqa: N802
            self._handle("PUT")

        def do_DELETE(self) -> None:  # noqa: N802
            self._handle("DELETE")

    return Handler


@pytest.fixture()
def fake_arm() -> Iterator[FakeArm]:
    """A fake ARM endpoint on a free loopback port, for one test."""
    arm = FakeArm()
    with serve(_handler(arm)) as port:
        arm.base_url = f"http://127.0.0.1:{port}"
        yield arm


@pytest.fixture()
def azure_backend(fake_arm: FakeArm):  # noqa: ANN201
    """The azure backend with the real SDK clients pointed at the fake."""
    return fake_arm.backend()
