"""The pool VMs as vmpool.bicep describes them: the cloud-init it loads is the same for every VM
and valid cloud-config, and each VM's userData (the agent's env file) loads in the agent."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from agent.config import load as load_agent_config

# Sample values for the Bicep expressions used in vmpool.bicep's agentEnv lines; an expression
# not listed here fails the test, so the rendering below follows the template as it changes.
ACTIONS = {"process": "cp {input} {output}"}
EXPRESSIONS = {
    "name": "vm01",
    "appBaseUrl": "https://func-abc.azurewebsites.net",
    "agentFunctionKey": "key-with-=-and-;-inside",
    "string(agentActions)": json.dumps(ACTIONS, separators=(",", ":")),
    "storageAccountName": "stabc",
    "storageSuffix": "core.windows.net",
    "vmIdentityClientId": "00000000-0000-0000-0000-000000000001",
    "workQueue": "work",
    "resultsContainer": "results",
    "claimTable": "tblclaim",
    "vmTable": "tblvm",
    "vmSlots": "1",
    "agentPackageUrl": "https://stabc.blob.core.windows.net/agent-package/a.tar.gz",
    "agentPackageContainer": "agent-package",
}


def _render_env(vmpool: str) -> str:
    block = vmpool[vmpool.index("var agentEnv"):vmpool.index("resource vms")]
    lines = re.findall(r"^\s*'((?:[^'\\]|\\.)*)'\s*$", block, re.MULTILINE)
    assert lines, "no agentEnv lines"

    def value(match: re.Match[str]) -> str:
        expression = match.group(1)
        if expression not in EXPRESSIONS:
            pytest.fail(f"no sample value for ${{{expression}}} in vmpool.bicep's agentEnv")
        return EXPRESSIONS[expression]

    return "\n".join(re.sub(r"\$\{([^}]+)\}", value, line) for line in lines)


def test_cloud_init_is_static_and_user_data_carries_the_agent_env(root: Path, infra: Path,
                                                                  tmp_path: Path) -> None:
    vmpool = (infra / "app" / "vmpool.bicep").read_text()
    template = (root / "shared" / "pool" / "vm" / "cloud-init.yaml").read_text()
    assert template.startswith("#cloud-config")
    assert "__AGENT_" not in template  # no placeholders: nothing in it is per VM
    config = yaml.safe_load(template)
    assert "customData: base64(cloudInit)" in vmpool  # the file as is, for every VM
    assert config["runcmd"] == [["/usr/local/sbin/vmpool-agent-settings"],
                                ["/usr/local/sbin/vmpool-agent-install"]]
    files = {f["path"]: f for f in config["write_files"]}
    assert "/etc/vmpool-agent/agent.env" not in files  # the settings come from userData
    assert "ExecStartPre=+/usr/local/sbin/vmpool-agent-settings" in \
        files["/etc/systemd/system/vmpool-agent.service"]["content"]
    decoded = _render_env(vmpool)
    assert "VMPOOL_AGENT_PACKAGE_URL=" + EXPRESSIONS["agentPackageUrl"] in decoded.splitlines()
    path = tmp_path / "agent.env"
    path.write_text(decoded)
    agent = load_agent_config({"AGENT_CONFIG": str(path)})
    assert agent.vm_name == "vm01"
    assert agent.api_base_url == "https://func-abc.azurewebsites.net"
    assert agent.function_key == "key-with-=-and-;-inside"
    assert set(agent.actions) == set(ACTIONS)
    assert agent.storage.blob_uri == "https://stabc.blob.core.windows.net"
    assert agent.storage.credential_kind == "managedidentity"
    assert agent.storage.client_id == EXPRESSIONS["vmIdentityClientId"]
    assert (agent.work_queue, agent.claim_table, agent.vm_table) == ("work", "tblclaim", "tblvm")
