"""Deployment files: the cloud-init snippet, the systemd unit and the agent image."""
from __future__ import annotations

import base64
import configparser
import re
import subprocess
import sys
from pathlib import Path

import yaml

from agent.config import load

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "agent" / "deploy"
CLOUD_INIT = REPO / "shared" / "pool" / "vm" / "cloud-init.yaml"
ENV_TEXT = "\n".join([
    "AGENT_VM_NAME=vm03",
    "AGENT_API_BASE_URL=https://app.example.net",
    "AGENT_FUNCTION_KEY=abc==",
    'AGENT_ACTIONS={"process":"convert --mode \\"fast\\" {input} {output}"}',
    "AGENT_STORAGE__blobServiceUri=https://acct.blob.core.windows.net",
    "AGENT_STORAGE__queueServiceUri=https://acct.queue.core.windows.net",
    "AGENT_STORAGE__tableServiceUri=https://acct.table.core.windows.net",
    "AGENT_STORAGE__credential=managedidentity",
    "AGENT_STORAGE__clientId=11111111-2222-3333-4444-555555555555",
    "AZURE_CLIENT_ID=11111111-2222-3333-4444-555555555555",
    "",
])


def _cloud_init() -> dict:
    text = CLOUD_INIT.read_text()
    assert text.startswith("#cloud-config\n")
    return yaml.safe_load(text)


def _files(doc: dict) -> dict[str, dict]:
    return {f["path"]: f for f in doc["write_files"]}


def test_cloud_init_embeds_the_unit_and_valid_scripts(tmp_path: Path) -> None:
    doc = _cloud_init()
    files = _files(doc)
    unit = files["/etc/systemd/system/vmpool-agent.service"]["content"]
    assert unit == (DEPLOY / "vmpool-agent.service").read_text()
    for name in ("vmpool-agent-install", "vmpool-agent-settings"):
        script = files[f"/usr/local/sbin/{name}"]["content"]
        (tmp_path / name).write_text(script)
        subprocess.run(["sh", "-n", str(tmp_path / name)], check=True)
    assert doc["runcmd"] == [["/usr/local/sbin/vmpool-agent-settings"],
                             ["/usr/local/sbin/vmpool-agent-install"]]


def test_settings_script_writes_the_user_data_and_keeps_the_last_good_file(
        tmp_path: Path) -> None:
    """The script run before every agent start, against a stand-in metadata service (curl on
    PATH answers with the userData, or fails as an unreachable service does)."""
    script = _files(_cloud_init())["/usr/local/sbin/vmpool-agent-settings"]["content"]
    etc = tmp_path / "etc"
    script = script.replace("/etc/vmpool-agent", str(etc))
    (tmp_path / "settings.sh").write_text(script)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    answer = tmp_path / "answer"
    (bin_dir / "curl").write_text(f'#!/bin/sh\n[ -f "{answer}" ] && exec cat "{answer}"\nexit 7\n')
    (bin_dir / "curl").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    answer.write_text(base64.b64encode(ENV_TEXT.encode()).decode())
    subprocess.run(["sh", str(tmp_path / "settings.sh")], check=True, env=env)
    env_file = etc / "agent.env"
    assert env_file.read_text() == ENV_TEXT
    config = load({"AGENT_CONFIG": str(env_file)})
    assert config.vm_name == "vm03"
    assert config.actions == {"process": ("convert", "--mode", "fast", "{input}", "{output}")}
    assert config.storage.credential_kind == "managedidentity"
    assert config.extra_env == {"AZURE_CLIENT_ID": "11111111-2222-3333-4444-555555555555"}
    answer.unlink()  # the metadata service does not answer: the last good settings stay
    subprocess.run(["sh", str(tmp_path / "settings.sh")], check=True, env=env)
    assert env_file.read_text() == ENV_TEXT
    env_file.unlink()  # ...and with none at all, the agent is not started on nothing
    failed = subprocess.run(["sh", str(tmp_path / "settings.sh")], env=env, check=False,
                            capture_output=True, text=True)
    assert failed.returncode != 0 and "no userData" in failed.stderr


def test_unit_restarts_on_failure_and_drains_on_stop() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keep the case of systemd keys
    parser.read_string((DEPLOY / "vmpool-agent.service").read_text())
    service = parser["Service"]
    assert service["Restart"] == "on-failure" and service["RestartPreventExitStatus"] == "2"
    assert service["KillMode"] == "mixed" and service["KillSignal"] == "SIGTERM"
    assert service["User"] == "vmpool-agent"
    assert service["ExecStart"].endswith("python -m agent")
    assert "AGENT_CONFIG=/etc/vmpool-agent/agent.env" in (DEPLOY / "vmpool-agent.service") \
        .read_text()
    assert parser["Install"]["WantedBy"] == "multi-user.target"


def test_dockerfile_is_slim_non_root_and_copies_every_shared_module_the_agent_needs() -> None:
    text = (REPO / "agent" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.\d+-slim$", text, re.M)
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and not users[-1].startswith(("root", "0"))
    copied = set(re.findall(r"shared/[\w/]+\.py", text))
    probe = ("import sys, agent.__main__, agent.runner; "
             "print('\\n'.join(m for m in sys.modules if m == 'shared' or "
             "m.startswith('shared.')))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout.split()
    needed = set()
    for module in out:
        path = Path(*module.split("."))
        needed.add(f"{path}/__init__.py" if (REPO / path).is_dir() else f"{path}.py")
    assert needed <= copied, needed - copied
