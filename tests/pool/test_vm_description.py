"""One description of a pool VM: what `pool.add` sends to ARM is what `vmpool.bicep` deploys.

The `pool.add` PUT goes through the real azure-mgmt-compute client to the local fake of ARM
(`conftest.py`); its identity, disk, security profile and Linux settings are compared with
`shared/pool/vm/profile.json`, the file vmpool.bicep loads with `loadJsonContent` (checked here to
take those properties from it rather than from literals of its own). The customData is
`shared/pool/vm/cloud-init.yaml` as is, which Bicep loads too, and passes `cloud-init schema`;
the userData is the agent's settings, which pass `python -m agent --check` and name exactly the
variables vmpool.bicep writes for vm01..vmNN.
"""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shared.pool.vmspec import CLOUD_INIT_PATH, PROFILE_PATH, profile
from tests.pool.conftest import SAMPLE_AGENT

ROOT = Path(__file__).resolve().parents[2]
SPEC = {"name": "vm21", "location": "westeurope", "vm_size": "Standard_D2s_v5",
        "image": "Canonical:ubuntu-24_04-lts:server:latest",
        "subnet_id": "/subscriptions/s/resourceGroups/net/providers/Microsoft.Network/"
                     "virtualNetworks/v/subnets/pool",
        "admin_username": "pool", "ssh_public_key": "ssh-ed25519 AAAA test"}


def _provisioned_vm_body(fake_arm, azure_backend, spec: dict = SPEC) -> dict:
    op = azure_backend.provision(dict(spec))
    for _ in range(20):
        status = azure_backend.poll(op)
        op = status.operation
        if status.done:
            break
    assert status.done and status.succeeded, status
    (put,) = fake_arm.seen("PUT", f"/virtualMachines/{spec['name']}")
    return put["body"]


@pytest.fixture()
def vm_body(fake_arm, azure_backend) -> dict:
    return _provisioned_vm_body(fake_arm, azure_backend)


def test_pool_add_body_is_the_shared_profile(vm_body: dict) -> None:
    p = profile()
    props = vm_body["properties"]
    assert vm_body["identity"] == {"type": p["identityType"], "userAssignedIdentities": {
        SAMPLE_AGENT.identity_id: {}}}
    assert props["securityProfile"] == p["securityProfile"]
    assert props["securityProfile"]["securityType"] == "TrustedLaunch"
    disk = props["storageProfile"]["osDisk"]
    assert {k: disk[k] for k in p["osDisk"]} == p["osDisk"]
    assert disk["managedDisk"]["storageAccountType"] == "StandardSSD_LRS"
    linux = props["osProfile"]["linuxConfiguration"]
    assert {k: linux[k] for k in p["linuxConfiguration"]} == p["linuxConfiguration"]
    assert linux["ssh"]["publicKeys"][0]["keyData"] == SPEC["ssh_public_key"]
    assert props["osProfile"]["allowExtensionOperations"] is p["allowExtensionOperations"]
    # what vmpool.bicep's checkov skips rely on (checkov cannot read the profile)
    assert p["linuxConfiguration"]["disablePasswordAuthentication"] is True
    assert p["allowExtensionOperations"] is False
    assert props["diagnosticsProfile"] == p["diagnosticsProfile"]
    assert vm_body["tags"]["vmpool-member"] == "vm21"


def test_bicep_takes_the_same_properties_from_the_same_file() -> None:
    text = (ROOT / "infra" / "app" / "vmpool.bicep").read_text()
    assert "loadJsonContent('../../shared/pool/vm/profile.json')" in text
    assert "loadTextContent('../../shared/pool/vm/cloud-init.yaml')" in text
    for wiring in ("type: vmProfile.identityType",
                   "securityProfile: vmProfile.securityProfile",
                   "osDisk: union(vmProfile.osDisk,",
                   "linuxConfiguration: union(vmProfile.linuxConfiguration,",
                   "allowExtensionOperations: vmProfile.allowExtensionOperations",
                   "diagnosticsProfile: vmProfile.diagnosticsProfile",
                   "customData: base64(cloudInit)",
                   "userData: base64(agentEnv[i])"):
        assert wiring in text, wiring
    # No second copy of what the profile says (comments aside).
    code = "\n".join(line.split("//", 1)[0] for line in text.splitlines())
    for literal in ("StandardSSD_LRS", "TrustedLaunch", "secureBootEnabled",
                    "disablePasswordAuthentication"):
        assert literal not in code, literal
    assert PROFILE_PATH.is_file() and CLOUD_INIT_PATH.is_file()


def test_custom_data_is_the_cloud_init_and_passes_its_schema(vm_body: dict,
                                                             tmp_path: Path) -> None:
    custom = base64.b64decode(vm_body["properties"]["osProfile"]["customData"]).decode()
    assert custom == CLOUD_INIT_PATH.read_text()
    path = tmp_path / "user-data.yaml"
    path.write_text(custom)
    tool = shutil.which("cloud-init")
    assert tool, "cloud-init is not installed (make install runs apt-get install cloud-init)"
    result = subprocess.run([tool, "schema", "-c", str(path)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid" in result.stdout + result.stderr


def test_user_data_settings_pass_the_agent_check(vm_body: dict, tmp_path: Path) -> None:
    env_text = base64.b64decode(vm_body["properties"]["userData"]).decode()
    path = tmp_path / "agent.env"
    path.write_text(env_text)
    result = subprocess.run([sys.executable, "-m", "agent", "--check"], cwd=ROOT,
                            env={"AGENT_CONFIG": str(path), "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    described = json.loads(result.stdout)
    assert described["vm"] == "vm21" and described["api"] == SAMPLE_AGENT.api_base_url
    assert described["storage"] == f"identity ({SAMPLE_AGENT.blob_uri})"
    assert "agent-key" not in result.stdout  # the key is in the file, never in the output
    assert f"VMPOOL_AGENT_PACKAGE_URL={SAMPLE_AGENT.package_url}" in env_text.splitlines()


def test_user_data_names_what_bicep_writes(vm_body: dict) -> None:
    text = (ROOT / "infra" / "app" / "vmpool.bicep").read_text()
    block = text[text.index("var agentEnv"):text.index("resource vms")]
    bicep_names = set(re.findall(r"^\s*'([A-Za-z_]+)=", block, re.MULTILINE))
    env_text = base64.b64decode(vm_body["properties"]["userData"]).decode()
    names = {line.split("=", 1)[0] for line in env_text.splitlines() if line}
    assert names == bicep_names


def test_a_vm_without_agent_settings_is_not_created(fake_arm) -> None:
    backend = fake_arm.backend(agent=None)
    from shared.pool.backends.azure import ProvisionSpecError  # noqa: PLC0415

    with pytest.raises(ProvisionSpecError, match="its agent needs"):
        backend.provision(dict(SPEC))
    assert fake_arm.requests == []


SPOT_SPEC = {**SPEC, "name": "spot21", "priority": "spot", "maxPrice": 0.05}


def test_pool_add_body_of_a_spot_vm_has_priority_eviction_policy_and_max_price(
        fake_arm, azure_backend) -> None:
    props = _provisioned_vm_body(fake_arm, azure_backend, SPOT_SPEC)["properties"]
    spot = profile()["spot"]
    assert (props["priority"], props["evictionPolicy"]) == ("Spot", "Deallocate")
    assert (spot["priority"], spot["evictionPolicy"]) == ("Spot", "Deallocate")
    assert props["billingProfile"] == {"maxPrice": 0.05}
    # Everything else is the same description as an on-demand member's.
    assert props["securityProfile"] == profile()["securityProfile"]
    env_text = base64.b64decode(props["userData"]).decode()
    assert f"AGENT_SCHEDULED_EVENTS_URL={spot['scheduledEventsUrl']}" in env_text.splitlines()


def test_an_on_demand_body_has_no_spot_properties(vm_body: dict) -> None:
    props = vm_body["properties"]
    assert not {"priority", "evictionPolicy", "billingProfile"} & set(props)
    assert "AGENT_SCHEDULED_EVENTS_URL" not in base64.b64decode(props["userData"]).decode()


def test_bicep_takes_the_spot_properties_from_the_same_profile() -> None:
    text = (ROOT / "infra" / "app" / "vmpool.bicep").read_text()
    for wiring in ("priority: vmProfile.spot.priority",
                   "evictionPolicy: vmProfile.spot.evictionPolicy",
                   "billingProfile: { maxPrice: json(spotMaxPrice) }",
                   "contains(spotVmNames, name) ? spotProperties : {}",
                   "AGENT_SCHEDULED_EVENTS_URL=${vmProfile.spot.scheduledEventsUrl}"):
        assert wiring in text, wiring
    main = (ROOT / "infra" / "main.bicep").read_text()
    assert "POOL_SPOT_VMS: join(spotVmNames, ',')" in main
    assert "vmNames: concat(vmNames, spotVmNames)" in main


@pytest.mark.parametrize("bad", [{"priority": "low"}, {"maxPrice": "cheap"}, {"maxPrice": 0},
                                 {"maxPrice": float("nan")}])
def test_a_bad_spot_spec_is_refused_before_anything_is_created(fake_arm, azure_backend,
                                                               bad: dict) -> None:
    from shared.pool.backends.azure import ProvisionSpecError  # noqa: PLC0415

    with pytest.raises(ProvisionSpecError):
        azure_backend.provision({**SPOT_SPEC, **bad})
    assert fake_arm.requests == []
