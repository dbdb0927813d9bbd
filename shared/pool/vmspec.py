"""One description of a pool VM, shared by `infra/app/vmpool.bicep` and `pool.add`.

`shared/pool/vm/profile.json` says what every pool VM is (identity kind, OS disk, Trusted Launch
security profile, Linux settings, extensions off, boot diagnostics) and
`shared/pool/vm/cloud-init.yaml` installs the agent; Bicep loads both with `loadJsonContent` /
`loadTextContent`, and this module builds the `pool.add` ARM body from the same two files. Per-VM
settings (the agent's env file) go into `userData`, which can be changed on an existing VM and
is read again before every agent start; `customData` (cloud-init) is the same for every VM.

Spot members take the profile's `spot` block as well: `priority: Spot`, `evictionPolicy:
Deallocate` (an evicted VM keeps its disk and comes back with a start), `billingProfile.maxPrice`
(POOL_SPOT_MAX_PRICE; -1 pays up to the on-demand price, so only capacity evicts), and the
agent watches Scheduled Events for the Preempt notice.
"""
from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

VM_DIR = Path(__file__).resolve().parent / "vm"
PROFILE_PATH = VM_DIR / "profile.json"
CLOUD_INIT_PATH = VM_DIR / "cloud-init.yaml"
PACKAGE_URL_NAME = "VMPOOL_AGENT_PACKAGE_URL"  # read by the cloud-init's install script
INSTALL_DIR = "/opt/vmpool-agent"  # where cloud-init installs the agent (versions/, app)


@cache
def profile() -> dict[str, Any]:
    """The shared VM profile (a fresh copy is not needed: callers never mutate it)."""
    return json.loads(PROFILE_PATH.read_text())


@cache
def cloud_init() -> str:
    return CLOUD_INIT_PATH.read_text()


@dataclass(frozen=True)
class AgentVmSettings:
    """What the agent on a pool VM needs besides its name; from the app's settings."""

    identity_id: str          # resource id of the user-assigned VM identity
    identity_client_id: str   # its client id (storage and package download)
    package_url: str
    api_base_url: str
    function_key: str = field(repr=False)
    actions: dict[str, Any] = field(default_factory=dict)
    blob_uri: str = ""
    queue_uri: str = ""
    table_uri: str = ""
    work_queue: str = "work"
    results_container: str = "results"
    claim_table: str = "tblclaim"
    vm_table: str = "tblvm"
    slots: int = 1
    package_container: str = "agent-package"

    def missing(self) -> list[str]:
        """Names of the settings a working VM needs but this lacks."""
        wanted = {"POOL_VM_IDENTITY_ID": self.identity_id,
                  "POOL_VM_IDENTITY_CLIENT_ID": self.identity_client_id,
                  "POOL_AGENT_PACKAGE_URL": self.package_url,
                  "POOL_AGENT_API_BASE_URL": self.api_base_url,
                  "POOL_AGENT_FUNCTION_KEY": self.function_key,
                  "POOL_AGENT_ACTIONS": self.actions,
                  "storage service URIs (<connection>__blobServiceUri, ...)":
                      self.blob_uri and self.queue_uri and self.table_uri}
        return [name for name, value in wanted.items() if not value]


def agent_env(vm: str, agent: AgentVmSettings, spot: bool = False) -> str:
    """The agent's env file for `vm` (userData): the same names vmpool.bicep writes (and, on a
    spot VM, where to watch for the eviction notice)."""
    lines = [
        f"AGENT_VM_NAME={vm}",
        f"AGENT_API_BASE_URL={agent.api_base_url}",
        f"AGENT_FUNCTION_KEY={agent.function_key}",
        f"AGENT_ACTIONS={json.dumps(agent.actions, separators=(',', ':'))}",
        f"AGENT_SLOTS={agent.slots}",
        f"AGENT_STORAGE__blobServiceUri={agent.blob_uri}",
        f"AGENT_STORAGE__queueServiceUri={agent.queue_uri}",
        f"AGENT_STORAGE__tableServiceUri={agent.table_uri}",
        "AGENT_STORAGE__credential=managedidentity",
        f"AGENT_STORAGE__clientId={agent.identity_client_id}",
        f"AGENT_WORK_QUEUE={agent.work_queue}",
        f"AGENT_RESULTS_CONTAINER={agent.results_container}",
        f"AGENT_CLAIM_TABLE={agent.claim_table}",
        f"AGENT_VM_TABLE={agent.vm_table}",
        f"AZURE_CLIENT_ID={agent.identity_client_id}",
        f"{PACKAGE_URL_NAME}={agent.package_url}",
        f"AGENT_PACKAGE_CONTAINER={agent.package_container}",  # self-upgrade (agent/upgrade.py)
        f"AGENT_INSTALL_DIR={INSTALL_DIR}",
    ]
    if spot:
        lines.append(f"AGENT_SCHEDULED_EVENTS_URL={profile()['spot']['scheduledEventsUrl']}")
    return "\n".join([*lines, ""])


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def vm_body(*, name: str, location: str, tags: Mapping[str, str], vm_size: str,
            image_ref: Mapping[str, Any], admin_username: str, ssh_public_key: str,
            nic_id: str, agent: AgentVmSettings, spot: bool = False,
            max_price: float = -1.0) -> dict[str, Any]:
    """The ARM PUT body of a pool VM, from the shared profile and cloud-init."""
    p = profile()
    linux = {**p["linuxConfiguration"], "ssh": {"publicKeys": [
        {"path": f"/home/{admin_username}/.ssh/authorized_keys", "keyData": ssh_public_key}]}}
    body: dict[str, Any] = {
        "location": location,
        "tags": {**tags, "vmpool-member": name},
        "identity": {"type": p["identityType"],
                     "userAssignedIdentities": {agent.identity_id: {}}},
        "properties": {
            "hardwareProfile": {"vmSize": vm_size},
            "storageProfile": {"imageReference": dict(image_ref),
                               "osDisk": {**p["osDisk"], "name": f"{name}-osdisk"}},
            "osProfile": {"computerName": name, "adminUsername": admin_username,
                          "customData": _b64(cloud_init()), "linuxConfiguration": linux,
                          "allowExtensionOperations": p["allowExtensionOperations"]},
            "securityProfile": p["securityProfile"],
            "userData": _b64(agent_env(name, agent, spot)),
            "networkProfile": {"networkInterfaces": [
                {"id": nic_id, "properties": {"primary": True, "deleteOption": "Delete"}}]},
            "diagnosticsProfile": p["diagnosticsProfile"],
        },
    }
    if spot:
        body["properties"].update(priority=p["spot"]["priority"],
                                  evictionPolicy=p["spot"]["evictionPolicy"],
                                  billingProfile={"maxPrice": max_price})
    return body


def agent_settings_from(settings: Any, env: Mapping[str, str]) -> AgentVmSettings:
    """The VM agent settings from the app's settings and its storage connection's URIs."""
    conn = settings.storage_connection
    try:
        actions = json.loads(settings.pool_agent_actions or "{}")
    except ValueError:
        actions = {}
    return AgentVmSettings(
        identity_id=settings.pool_vm_identity_id,
        identity_client_id=settings.pool_vm_identity_client_id,
        package_url=settings.pool_agent_package_url,
        package_container=_container_of(settings.pool_agent_package_url),
        api_base_url=settings.pool_agent_api_base_url,
        function_key=settings.pool_agent_function_key,
        actions=actions if isinstance(actions, dict) else {},
        blob_uri=env.get(f"{conn}__blobServiceUri", ""),
        queue_uri=env.get(f"{conn}__queueServiceUri", ""),
        table_uri=env.get(f"{conn}__tableServiceUri", ""),
        work_queue=settings.work_queue, results_container=settings.results_container,
        claim_table=settings.claim_table, vm_table=settings.vm_table, slots=settings.vm_slots)


def _container_of(url: str) -> str:
    """The container of a blob URL (`https://acct.blob.../CONTAINER/name`), else the default."""
    parts = url.split("://", 1)[-1].split("/")
    return parts[1] if len(parts) > 2 and parts[1] else "agent-package"
