"""Azure-VM mode end to end: the app in devhost with `POOL_BACKEND=azure`, ARM played by the
local fake of its REST API (tests/pool/conftest.py), the app's managed identity by a local
App Service identity endpoint (`IDENTITY_ENDPOINT`/`IDENTITY_HEADER`, what Functions gives an
app, read by azure-identity's `DefaultAzureCredential`).

A VM "boots" when ARM reports it running: like the cloud-init's `vmpool-agent-settings` and
unit, the machine decodes its userData into the agent's env file and runs `python -m agent`
with `AGENT_CONFIG` pointing at it. Two things stand in for Azure there: the storage connection
(Azurite's connection string in place of the VM's managed identity, which Azurite cannot
verify) and the agent's tuning for short test timings (plus the test action's own settings),
all passed as process environment the
way `/etc/vmpool-agent/environment` would. Everything else the agent knows comes from the
userData the app itself wrote: for vm01 what vmpool.bicep writes (the same renderer), for vm02
the PUT body of a `pool.add` change through the API.
"""
from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from devhost.process import DevHostProcess
from shared.pool.vmspec import agent_env, agent_settings_from
from shared.services import Services
from shared.settings import Settings
from shared.storage import ensure_resources
from tests.e2e.conftest import FUNCTION_KEY, ROOT, App, app_env
from tests.e2e.test_pipeline import _executions
from tests.loopback import serve
from tests.pool.conftest import RESOURCE_GROUP, SUBSCRIPTION, TOKEN, FakeArm, _handler
from tools.azurite import Azurite

IDENTITY_HEADER = "e2e-identity-header"
# The agent's tuning for the test's short timings (on a VM these keep their defaults).
TUNING = ("AGENT_POLL_MIN_SECONDS", "AGENT_POLL_MAX_SECONDS", "AGENT_IDLE_SECONDS",
          "AGENT_VISIBILITY_TIMEOUT_SECONDS", "AGENT_HEARTBEAT_SECONDS",
          "AGENT_CLAIM_STALE_SECONDS", "AGENT_API_RETRY_SECONDS")


def _identity_handler(seen: list[str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        """The App Service managed identity endpoint (api-version 2019-08-01)."""

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            query = parse_qs(urlparse(self.path).query)
            seen.append(query.get("resource", [""])[0])
            if self.headers.get("X-IDENTITY-HEADER") != IDENTITY_HEADER:
                self.send_response(401)
                self.end_headers()
                return
            body = json.dumps({"access_token": TOKEN, "expires_on": "4102444800",
                               "resource": query.get("resource", [""])[0],
                               "token_type": "Bearer"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


class Machines:
    """The fake's VMs as agent processes, started and stopped as ARM reports power."""

    def __init__(self, root: Path, azurite: Azurite, tuning: dict[str, str]) -> None:
        self.root, self.azurite, self.tuning = root, azurite, tuning
        self.running: dict[str, subprocess.Popen] = {}
        self.boots: list[str] = []
        self.lock = threading.Lock()

    def on_power(self, name: str, state: str, vm: dict[str, Any]) -> None:
        with self.lock:
            if state == "running" and name not in self.running:
                self.running[name] = self._boot(name, vm)
                self.boots.append(name)
            elif state == "deallocated" and name in self.running:
                self._halt(self.running.pop(name))

    def _boot(self, name: str, vm: dict[str, Any]) -> subprocess.Popen:
        folder = self.root / name
        (folder / "work").mkdir(parents=True, exist_ok=True)
        env_file = folder / "agent.env"
        env_file.write_bytes(base64.b64decode(vm["userData"]))  # vmpool-agent-settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
        env.update(self.tuning, AGENT_CONFIG=str(env_file), AGENT_WORK_DIR=str(folder / "work"),
                   AGENT_INSTALL_DIR=str(folder / "install"), PYTHONPATH=str(ROOT),
                   PYTHONUNBUFFERED="1",
                   AGENT_STORAGE_CONNECTION=self.azurite.connection_string)
        log = open(folder / "agent.log", "ab")  # noqa: SIM115 - lives as long as the process
        try:
            return subprocess.Popen([sys.executable, "-m", "agent"], cwd=folder, env=env,
                                    stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        finally:
            log.close()

    @staticmethod
    def _halt(process: subprocess.Popen) -> None:
        """Deallocation shuts the OS down: systemd sends SIGTERM, then kills what is left."""
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)

    def stop_all(self) -> None:
        with self.lock:
            for process in self.running.values():
                self._halt(process)
            self.running.clear()

    def log(self, name: str) -> str:
        path = self.root / name / "agent.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@pytest.fixture()
def arm() -> Iterator[FakeArm]:
    fake = FakeArm(op_seconds=1.0)  # operations end on their own, as in Azure
    with serve(_handler(fake)) as port:
        fake.base_url = f"http://127.0.0.1:{port}"
        yield fake


def test_azure_vms_from_bicep_and_from_pool_add_take_work(azurite: Azurite, tmp_path: Path,
                                                          arm: FakeArm) -> None:
    counts = tmp_path / "counts"
    counts.mkdir()
    tokens: list[str] = []
    local = app_env(azurite, tmp_path, E2E_COUNT_DIR=str(counts), E2E_SLOW_SECONDS="3")
    actions = json.loads(local["AGENT_ACTIONS"])
    identity = (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/"
                "Microsoft.ManagedIdentity/userAssignedIdentities/id-vm")
    # The app as azd configures it for Azure (infra/app/api.bicep), pointed at the fakes.
    env = {k: v for k, v in local.items() if not k.startswith(("AGENT_", "LOCAL_"))}
    env.update({
        "POOL_BACKEND": "azure", "POOL_VMS": "vm01", "POOL_MAX_RUNNING": "2",
        "AZURE_SUBSCRIPTION_ID": SUBSCRIPTION, "POOL_RESOURCE_GROUP": RESOURCE_GROUP,
        "ARM_ENDPOINT": arm.base_url, "POOL_LOCATION": "westeurope",
        "POOL_VM_SIZE": "Standard_D2s_v3",
        "POOL_VM_IMAGE": "Canonical:ubuntu-24_04-lts:server:latest",
        "POOL_SUBNET_ID": arm.rid("Microsoft.Network", "virtualNetworks", "vnet/subnets/pool"),
        "POOL_ADMIN_USERNAME": "azureuser", "POOL_SSH_PUBLIC_KEY": "ssh-ed25519 AAAAtest e2e",
        "POOL_VM_IDENTITY_ID": identity,
        "POOL_VM_IDENTITY_CLIENT_ID": "00000000-0000-0000-0000-00000000c11d",
        "POOL_AGENT_PACKAGE_URL": "https://stpool.blob.core.windows.net/agent-package/x.tar.gz",
        "POOL_AGENT_FUNCTION_KEY": FUNCTION_KEY, "POOL_AGENT_ACTIONS": json.dumps(actions),
        # The identity-based URIs the VMs' userData names (the app itself uses the string).
        "AzureWebJobsStorage__blobServiceUri": "https://stpool.blob.core.windows.net",
        "AzureWebJobsStorage__queueServiceUri": "https://stpool.queue.core.windows.net",
        "AzureWebJobsStorage__tableServiceUri": "https://stpool.table.core.windows.net",
        "AZURE_CLIENT_ID": "00000000-0000-0000-0000-0000000000a1",
        "IDENTITY_HEADER": IDENTITY_HEADER,
    })
    # Every pool and ARM setting given here is one the templates give the app in Azure.
    templates = "".join((ROOT / "infra" / f).read_text() for f in ("main.bicep",
                                                                   "app/api.bicep"))
    named = [k for k in env if k.startswith(("POOL_", "ARM_", "AZURE_SUBSCRIPTION"))]
    assert [k for k in named if not re.search(rf"\b{k}\b\s*:", templates)] == []
    services = Services.from_env(env)
    ensure_resources(services.settings, services.connection)
    # The action's own settings go with the tuning (E2E_* are read by step_action.py).
    machines = Machines(tmp_path / "vms", azurite, {
        k: v for k, v in local.items() if k in TUNING or k.startswith("E2E_")})
    arm.on_power = machines.on_power
    host = DevHostProcess(ROOT, env=env)
    env["POOL_AGENT_API_BASE_URL"] = host.env["POOL_AGENT_API_BASE_URL"] = host.base_url
    # vm01 as vmpool.bicep leaves it: deallocated, its userData from the same renderer.
    settings = Settings.from_env(env)
    arm.add_vm("vm01", user_data=base64.b64encode(agent_env(
        "vm01", agent_settings_from(settings, env)).encode()).decode())
    with serve(_identity_handler(tokens)) as identity_port:
        env["IDENTITY_ENDPOINT"] = host.env["IDENTITY_ENDPOINT"] = (
            f"http://127.0.0.1:{identity_port}/msi/token")
        app = App(host, env)
        try:
            host.start(timeout=120)
            # Work first: the scaler starts the Bicep member, vm01, for it.
            bodies = [b'{"slow": 1, "n": %d}' % i for i in range(12)]
            for i, body in enumerate(bodies[:4]):
                app.upload(f"az/{i}.json", body)
            app.wait_for("vm01 at work", lambda: any(
                j["vm"] == "vm01" for j in app.jobs()), timeout=120)
            # Then a member added through the API, with more work than vm01 alone can take.
            change = app.post("/api/changes", json={"changeType": "pool.add", "vms": ["vm02"]})
            assert change.status_code == 202, change.text
            change_id = change.json()["changeId"]
            for i, body in enumerate(bodies[4:], start=4):
                app.upload(f"az/{i}.json", body)
            status = app.wait_for("pool.add", lambda: (s := app.get(
                f"/api/changes/{change_id}").json())["runtimeStatus"] == "Completed" and s,
                timeout=120)
            assert status["status"] == "succeeded", status
            (put,) = arm.seen("PUT", "virtualMachines/vm02")
            assert "userData" in put["body"]["properties"]

            def finished() -> list[dict]:
                jobs = app.jobs()
                return jobs if len(jobs) == len(bodies) and all(
                    j["status"] == "succeeded" for j in jobs) else []

            try:
                jobs = app.wait_for("every file", finished, timeout=240)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n--- vm01 ---\n{machines.log('vm01')}\n"
                                     f"--- vm02 ---\n{machines.log('vm02')}") from None
            assert all(_executions(counts, "process", body) == 1 for body in bodies)
            assert {j["vm"] for j in jobs} == {"vm01", "vm02"}, jobs  # both kinds took work
            assert {"vm01", "vm02"} <= set(machines.boots)
            # The app's identity was asked for a token for the ARM endpoint it was given.
            assert tokens and {r.rstrip("/") for r in tokens} == {arm.base_url}
            # Nothing left: the scaler deallocates both once idle.
            app.wait_for("both VMs deallocated", lambda: all(
                arm.vms[n]["power"] == "deallocated" for n in ("vm01", "vm02")) and all(
                v["state"] == "deallocated" for v in app.pool()["vms"]), timeout=120)
            assert arm.seen("POST", "virtualMachines/vm01/deallocate")
            assert not machines.running  # the machines went down with them
        finally:
            host.stop()
            machines.stop_all()
