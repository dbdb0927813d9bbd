"""The pool VMs' cloud-init as the template renders it: the agent's cloud-init template with the
per-VM environment file filled in is valid cloud-config, and the agent loads that file."""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
import yaml

from agent.config import load as load_agent_config
from scripts import bicep_reader as br

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
}


def _render_env(vmpool: str) -> str:
    block = vmpool[vmpool.index("var agentEnv"):vmpool.index("var customData")]
    lines = re.findall(r"^\s*'((?:[^'\\]|\\.)*)'\s*$", block, re.MULTILINE)
    assert lines, "no agentEnv lines"

    def value(match: re.Match[str]) -> str:
        expression = match.group(1)
        if expression not in EXPRESSIONS:
            pytest.fail(f"no sample value for ${{{expression}}} in vmpool.bicep's agentEnv")
        return EXPRESSIONS[expression]

    return "\n".join(re.sub(r"\$\{([^}]+)\}", value, line) for line in lines)


def _render_cloud_init(root: Path, infra: Path) -> tuple[dict, str]:
    vmpool = br.read(infra / "app" / "vmpool.bicep")
    env_text = _render_env(vmpool)
    template = (root / "agent" / "deploy" / "cloud-init.yaml").read_text()
    rendered = template.replace("__AGENT_ENV_B64__", base64.b64encode(env_text.encode()).decode())
    rendered = rendered.replace("__AGENT_PACKAGE_URL__",
                                "https://stabc.blob.core.windows.net/agent-package/a.tar.gz")
    assert rendered.startswith("#cloud-config")
    assert "__AGENT_" not in rendered, "a placeholder was left unfilled"
    return yaml.safe_load(rendered), env_text


def test_rendered_cloud_init_is_valid_and_carries_the_agent_env(root: Path, infra: Path,
                                                                tmp_path: Path) -> None:
    config, env_text = _render_cloud_init(root, infra)
    (env_file,) = [f for f in config["write_files"] if f["path"] == "/etc/vmpool-agent/agent.env"]
    assert env_file["encoding"] == "b64"
    decoded = base64.b64decode(env_file["content"]).decode()
    assert decoded == env_text
    assert any("__AGENT_" not in str(cmd) and "agent-package" in str(cmd)
               for cmd in config["runcmd"])

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
