"""The azure backend through the real azure-mgmt clients against a local fake of ARM."""
from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from shared.pool.backends import (
    BackendError,
    InvalidOperation,
    Operation,
    OperationInProgress,
    Throttled,
    VmNotFound,
)
from shared.pool.backends.azure import AzureBackend, ProvisionSpecError
from shared.settings import SettingError

FakeArm = Any  # the fake ARM of conftest.py (a fixture; tests/ is not a package)
VM_PATH = "/providers/Microsoft.Compute/virtualMachines"

SPEC = {"name": "vm09", "location": "westeurope", "vm_size": "Standard_B2s",
        "image": "Canonical:ubuntu-24_04-lts:server:latest",
        "subnet_id": "/subscriptions/s/resourceGroups/net/providers/Microsoft.Network/"
                     "virtualNetworks/v/subnets/pool",
        "admin_username": "pool", "ssh_public_key": "ssh-ed25519 AAAA test"}


def test_power_state_reads_the_instance_view(fake_arm: FakeArm,
                                             azure_backend: AzureBackend) -> None:
    for power in ("running", "starting", "stopped", "deallocated", "deallocating", "stopping"):
        fake_arm.add_vm("vm01", power=power)
        expected = "stopped" if power == "stopping" else power
        assert azure_backend.power_state("vm01") == expected
    calls = fake_arm.seen("GET", f"{VM_PATH}/vm01/instanceView")
    assert len(calls) == 6
    assert all(c["auth"] == f"Bearer {fake_arm.token}" and c["query"]["api-version"]
               for c in calls)


def test_addresses_follow_vm_nic_and_public_ip(fake_arm: FakeArm,
                                               azure_backend: AzureBackend) -> None:
    fake_arm.add_vm("vm01", private_ip="10.1.2.3", public_ip="52.1.2.3")
    fake_arm.add_vm("vm02", private_ip="10.1.2.4", public_ip=None)
    assert azure_backend.addresses("vm01") == {"private_ip": "10.1.2.3", "public_ip": "52.1.2.3"}
    assert azure_backend.addresses("vm02") == {"private_ip": "10.1.2.4", "public_ip": None}
    assert fake_arm.seen("GET", "/networkInterfaces/vm01-nic")
    assert len(fake_arm.seen("GET", "/publicIPAddresses/")) == 1  # vm02 has none to look up


def test_start_returns_at_once_and_poll_follows_the_async_operation(
        fake_arm: FakeArm, azure_backend: AzureBackend) -> None:
    fake_arm.op_polls = 2
    fake_arm.add_vm("vm01")
    op = azure_backend.start("vm01")
    assert (op.backend, op.kind, op.vm) == ("azure", "start", "vm01")
    assert len(fake_arm.seen("POST", f"{VM_PATH}/vm01/start")) == 1
    assert not fake_arm.seen("GET", "/operations/")  # nothing waited on the operation
    assert azure_backend.power_state("vm01") == "starting"
    # the handle survives a round trip through JSON (durable orchestration state)
    op = Operation.from_json(op.to_json())
    statuses = [azure_backend.poll(op) for _ in range(3)]
    assert [s.done for s in statuses] == [False, False, True]
    assert statuses[-1].succeeded and statuses[-1].status == "Succeeded"
    assert len(fake_arm.seen("GET", "/operations/")) == 3  # one status GET per poll
    assert azure_backend.power_state("vm01") == "running"


def test_deallocate_is_a_long_running_operation_too(fake_arm: FakeArm,
                                                    azure_backend: AzureBackend) -> None:
    fake_arm.add_vm("vm01", power="running")
    op = azure_backend.deallocate("vm01")
    assert azure_backend.power_state("vm01") == "deallocating"
    first = azure_backend.poll(op)
    second = azure_backend.poll(op)
    assert (first.done, second.done, second.succeeded) == (False, True, True)
    assert azure_backend.power_state("vm01") == "deallocated"


def test_a_failed_operation_reports_the_arm_error(fake_arm: FakeArm,
                                                  azure_backend: AzureBackend) -> None:
    fake_arm.add_vm("vm01")
    fake_arm.fail_next["start"] = {"code": "AllocationFailed",
                                   "message": "no capacity for Standard_D2s_v3"}
    op = azure_backend.start("vm01")
    azure_backend.poll(op)
    status = azure_backend.poll(op)
    assert (status.done, status.succeeded, status.status) == (True, False, "Failed")
    assert "AllocationFailed" in status.error and "no capacity" in status.error


def test_429_with_retry_after_is_retried_by_the_sdk(fake_arm: FakeArm,
                                                    azure_backend: AzureBackend) -> None:
    fake_arm.add_vm("vm01", power="running")
    fake_arm.throttle("/instanceView", times=1, retry_after="1")
    assert azure_backend.power_state("vm01") == "running"
    assert len(fake_arm.seen("GET", "/vm01/instanceView")) == 2  # the 429, then the retry


def test_persistent_throttling_raises_throttled_with_retry_after(fake_arm: FakeArm) -> None:
    backend = fake_arm.backend(retry_total=0)
    fake_arm.add_vm("vm01")
    fake_arm.throttle("/start", times=5, retry_after="7")
    with pytest.raises(Throttled) as err:
        backend.start("vm01")
    assert err.value.retry_after == 7
    assert "vm01" in str(err.value) and "429" in str(err.value)
    assert fake_arm.vms["vm01"]["power"] == "deallocated"


def test_a_vm_already_starting_is_operation_in_progress(fake_arm: FakeArm,
                                                        azure_backend: AzureBackend) -> None:
    fake_arm.add_vm("vm01")
    azure_backend.start("vm01")
    with pytest.raises(OperationInProgress, match="vm01.*409.*OperationNotAllowed"):
        azure_backend.start("vm01")
    with pytest.raises(OperationInProgress):
        azure_backend.deallocate("vm01")


def test_unknown_vms_raise_vm_not_found(fake_arm: FakeArm,
                                        azure_backend: AzureBackend) -> None:
    for call in (azure_backend.power_state, azure_backend.start, azure_backend.deallocate,
                 azure_backend.addresses):
        with pytest.raises(VmNotFound, match="'ghost' was not found in resource group"):
            call("ghost")
    with pytest.raises(VmNotFound, match="not a valid VM name"):
        azure_backend.start("../../subscriptions")
    assert not any("subscriptions/subscriptions" in r["path"] for r in fake_arm.requests)


def test_provision_creates_public_ip_nic_then_vm(fake_arm: FakeArm,
                                                 azure_backend: AzureBackend) -> None:
    op = azure_backend.provision({**SPEC, "public_ip": True, "tags": {"pool": "p1"}})
    kinds = []
    for _ in range(20):
        status = azure_backend.poll(op)
        op = status.operation
        kinds.append(op.step)
        if status.done:
            break
    assert status.done and status.succeeded
    puts = [r for r in fake_arm.requests if r["method"] == "PUT"]
    assert [p["path"].rsplit("/", 2)[1] for p in puts] == [
        "publicIPAddresses", "networkInterfaces", "virtualMachines"]
    nic_body = puts[1]["body"]["properties"]["ipConfigurations"][0]["properties"]
    assert nic_body["subnet"]["id"] == SPEC["subnet_id"]
    assert nic_body["publicIPAddress"]["id"].endswith("/publicIPAddresses/vm09-pip")
    vm_body = puts[2]["body"]
    assert vm_body["properties"]["hardwareProfile"]["vmSize"] == "Standard_B2s"
    assert vm_body["properties"]["storageProfile"]["imageReference"]["offer"] == (
        "ubuntu-24_04-lts")
    assert vm_body["tags"] == {"pool": "p1", "vmpool-member": "vm09"}  # as Bicep tags them
    assert azure_backend.addresses("vm09") == {"private_ip": "10.0.0.9", "public_ip": "20.0.0.9"}


def test_provision_spec_errors_send_nothing(fake_arm: FakeArm,
                                            azure_backend: AzureBackend) -> None:
    with pytest.raises(ProvisionSpecError, match="missing vm_size, image"):
        azure_backend.provision({"name": "vm09", "location": "x", "subnet_id": "s",
                                 "admin_username": "u", "ssh_public_key": "k"})
    with pytest.raises(ProvisionSpecError, match="not a valid VM name"):
        azure_backend.provision({**SPEC, "name": "bad name"})
    with pytest.raises(ProvisionSpecError, match="image"):
        azure_backend.provision({**SPEC, "image": "ubuntu"})
    assert fake_arm.requests == []


def test_provision_takes_defaults_and_api_field_names(fake_arm: FakeArm) -> None:
    defaults = {"location": "northeurope", "vm_size": "Standard_B1s", "image": SPEC["image"],
                "subnet_id": SPEC["subnet_id"], "admin_username": "pool",
                "ssh_public_key": "ssh-ed25519 AAAA default", "public_ip": False}
    backend = fake_arm.backend(provisioning=defaults)
    full = backend.provision_spec({"name": "vm10", "size": "Standard_D4s_v5",
                                   "sshPublicKey": "ssh-ed25519 BBBB", "publicIp": True,
                                   "slots": 2})
    assert (full["vm_size"], full["ssh_public_key"], full["public_ip"], full["location"]) == (
        "Standard_D4s_v5", "ssh-ed25519 BBBB", True, "northeurope")
    op = backend.provision({"name": "vm10"})
    assert op.spec["vm_size"] == "Standard_B1s" and op.spec["public_ip"] is False
    assert fake_arm.seen("PUT", "/networkInterfaces/vm10-nic")  # no public IP step
    assert not fake_arm.seen("PUT", "/publicIPAddresses/")


def test_a_failed_provisioning_step_stops_there(fake_arm: FakeArm,
                                                azure_backend: AzureBackend) -> None:
    fake_arm.fail_next["put:networkInterfaces"] = {"code": "SubnetNotFound",
                                                   "message": "subnet pool does not exist"}
    op = azure_backend.provision(SPEC)
    for _ in range(10):
        status = azure_backend.poll(op)
        op = status.operation
        if status.done:
            break
    assert (status.done, status.succeeded) == (True, False)
    assert "SubnetNotFound" in status.error
    assert "vm09" not in fake_arm.vms


def test_delete_removes_vm_nic_and_public_ip(fake_arm: FakeArm,
                                             azure_backend: AzureBackend) -> None:
    fake_arm.add_vm("vm05")
    op = azure_backend.delete("vm05")
    for _ in range(20):
        status = azure_backend.poll(op)
        op = status.operation
        if status.done:
            break
    assert status.succeeded
    assert ("vm05" not in fake_arm.vms and "vm05-nic" not in fake_arm.nics
            and "vm05-pip" not in fake_arm.pips)


def test_bad_operation_handles_are_refused(fake_arm: FakeArm,
                                           azure_backend: AzureBackend) -> None:
    with pytest.raises(InvalidOperation):
        Operation.from_json("{not json")
    with pytest.raises(InvalidOperation, match="backend 'local'"):
        azure_backend.poll(Operation("local", "start", "vm01", token="1"))
    forged = base64.b64encode(json.dumps({"version": 99, "data": {}}).encode()).decode()
    with pytest.raises(InvalidOperation, match="continuation token"):
        azure_backend.poll(Operation("azure", "start", "vm01", token=forged))
    with pytest.raises(InvalidOperation):
        azure_backend.poll(Operation("azure", "reboot", "vm01", token=forged))
    assert fake_arm.requests == []


def test_configuration_errors_name_the_setting(fake_arm: FakeArm) -> None:
    with pytest.raises(SettingError, match="AZURE_SUBSCRIPTION_ID"):
        fake_arm.backend(subscription_id="")
    with pytest.raises(SettingError, match="POOL_RESOURCE_GROUP"):
        fake_arm.backend(resource_group="")
    with pytest.raises(SettingError, match="ARM_ENDPOINT"):
        fake_arm.backend(arm_endpoint="http://management.example.com")


def test_transport_failures_are_backend_errors(fake_arm: FakeArm) -> None:
    backend = fake_arm.backend(arm_endpoint="http://127.0.0.1:9", retry_total=0)
    with pytest.raises(BackendError, match="vm01"):
        backend.power_state("vm01")


def test_tokens_are_asked_for_the_configured_arm_endpoint(fake_arm: FakeArm) -> None:
    """A sovereign cloud's ARM is its own token audience: the scope follows ARM_ENDPOINT."""
    credential = fake_arm.credential()
    fake_arm.add_vm("vm31", power="running")
    backend = fake_arm.backend(credential=credential)
    assert backend.power_state("vm31") == "running"
    assert credential.scopes and all(
        scopes == (f"{fake_arm.base_url.rstrip('/')}/.default",) for scopes in credential.scopes)


def test_a_pass_reads_power_from_one_listing(fake_arm: FakeArm) -> None:
    backend = fake_arm.backend(retry_total=0)
    for name, power in (("vm01", "running"), ("vm02", "deallocated"), ("vm03", "stopping")):
        fake_arm.add_vm(name, power=power)
    with backend.one_pass():
        assert [backend.power_state(v) for v in ("vm01", "vm02", "vm03")] == [
            "running", "deallocated", "stopped"]
        with pytest.raises(VmNotFound, match="'vm04' was not found"):
            backend.power_state("vm04")
    assert len(fake_arm.list_calls()) == 1 and not fake_arm.seen("GET", "/instanceView")
    with backend.one_pass():  # a new pass, a new look
        backend.power_state("vm01")
    assert len(fake_arm.list_calls()) == 2
    backend.power_state("vm01")  # outside a pass: the VM's own instance view
    assert len(fake_arm.seen("GET", "/vm01/instanceView")) == 1


def test_a_failed_listing_is_not_asked_again_in_the_pass(fake_arm: FakeArm) -> None:
    backend = fake_arm.backend(retry_total=0)
    fake_arm.add_vm("vm01")
    fake_arm.add_vm("vm02")
    fake_arm.throttle("list", times=5, retry_after="4")
    with backend.one_pass():
        for vm in ("vm01", "vm02"):
            with pytest.raises(Throttled) as err:
                backend.power_state(vm)
            assert err.value.retry_after == 4 and "resource group 'rg-pool'" in str(err.value)
    assert len(fake_arm.list_calls()) == 1


def test_a_finished_operation_makes_the_vm_read_fresh(fake_arm: FakeArm,
                                                      azure_backend: AzureBackend) -> None:
    fake_arm.add_vm("vm01", power="running")
    with azure_backend.one_pass():
        assert azure_backend.power_state("vm01") == "running"  # the listing
        op = azure_backend.deallocate("vm01")
        assert azure_backend.power_state("vm01") == "deallocating"  # acted on: read again
        while not azure_backend.poll(op).done:
            pass
        assert azure_backend.power_state("vm01") == "deallocated"
    assert len(fake_arm.list_calls()) == 1
    assert len(fake_arm.seen("GET", "/vm01/instanceView")) == 2
