"""The azd hooks: azure.yaml runs scripts/azd_hooks.py the same way on posix and on Windows, and
the hooks build their commands from the azd environment (the provisioning outputs) without
putting host names together themselves. `az` and `azd` are stood in for by a recorder that
answers like them; `ssh-keygen` and `git` are the real ones."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts import azd_hooks
from scripts.azd_hooks import HookError

HOST = "func-abc-x1y2z3.westeurope-01.azurewebsites.us"  # a defaultHostName not built from a name
ENV = {
    "AZURE_ENV_NAME": "vmpool-test", "AZURE_RESOURCE_GROUP": "rg-vmpool-test",
    "AZURE_FUNCTION_NAME": "func-abc", "AZURE_FUNCTION_HOST_NAME": HOST,
    "AZURE_FUNCTION_URL": f"https://{HOST}", "AZURE_EVENTGRID_TOPIC_NAME": "evgt-abc",
    "AZURE_KEY_VAULT_NAME": "kv-abc", "AZURE_STORAGE_ACCOUNT_NAME": "stabc",
    "AZURE_STORAGE_SUFFIX": "core.usgovcloudapi.net", "VM_ADMIN_SSH_PUBLIC_KEY": "ssh-ed25519 AAA",
}


class Recorder:
    """Stands in for `az`/`azd`: records each command, answers from `answers` (first matching
    prefix), and runs anything else (ssh-keygen, git) for real."""

    def __init__(self, answers: dict[str, Any] | None = None) -> None:
        self.commands: list[list[str]] = []
        self.answers = answers or {}

    def __call__(self, argv: list[str], *, check: bool = True) -> str:
        self.commands.append(list(argv))
        line = " ".join(argv)
        for prefix, answer in self.answers.items():
            if line.startswith(prefix):
                value = answer.pop(0) if isinstance(answer, list) else answer
                if isinstance(value, Exception):
                    if check:
                        raise value
                    return ""
                return value
        if argv[0] in ("az", "azd"):
            return ""
        return azd_hooks.run_command(argv, check=check)

    def named(self, *words: str) -> list[list[str]]:
        return [c for c in self.commands if c[:len(words)] == list(words)]


# --- azure.yaml ------------------------------------------------------------------------------

def _hooks(root: Path) -> dict[str, Any]:
    return yaml.safe_load((root / "azure.yaml").read_text())["hooks"]


def test_every_hook_runs_the_same_script_on_posix_and_windows(root: Path) -> None:
    hooks = _hooks(root)
    assert set(hooks) == set(azd_hooks.HOOKS)
    for name, hook in hooks.items():
        assert set(hook) == {"posix", "windows"}, name
        assert hook["posix"]["shell"] == "sh" and hook["windows"]["shell"] == "pwsh", name
        posix, windows = (shlex.split(hook[k]["run"]) for k in ("posix", "windows"))
        assert posix[0] == "python3" and windows[0] == "python", name
        assert posix[1:] == windows[1:] == ["scripts/azd_hooks.py", name], name
        assert (root / posix[1]).is_file()
        for entry in hook.values():
            assert entry["continueOnError"] is False and entry["interactive"] is False


def test_the_replaced_shell_scripts_are_gone(root: Path) -> None:
    assert not list((root / "scripts").glob("*.sh"))


def test_the_script_refuses_an_unknown_hook(root: Path) -> None:
    done = subprocess.run([sys.executable, "scripts/azd_hooks.py", "predown"], cwd=root,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "usage" in done.stderr


def test_a_hook_missing_its_inputs_says_which(root: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "AZURE_RESOURCE_GROUP": "rg"}
    done = subprocess.run([sys.executable, "scripts/azd_hooks.py", "postdeploy"], cwd=root,
                          capture_output=True, text=True, check=False, env=env)
    assert done.returncode == 1
    assert "AZURE_FUNCTION_NAME" in done.stderr and "AZURE_KEY_VAULT_NAME" in done.stderr


# --- host names ------------------------------------------------------------------------------

def test_no_infra_or_script_file_hard_codes_the_public_cloud_app_domain(root: Path) -> None:
    files = [p for top in ("infra", "scripts") for p in (root / top).rglob("*")
             if p.is_file() and "__pycache__" not in p.parts]
    files.append(root / "azure.yaml")
    assert len(files) > 10
    offenders = [str(p.relative_to(root)) for p in files
                 if "azurewebsites.net" in p.read_text(errors="replace")]
    assert not offenders, offenders


def test_the_host_name_comes_from_the_provisioning_outputs() -> None:
    assert azd_hooks.function_host(ENV) == HOST
    only_url = {k: v for k, v in ENV.items() if k != "AZURE_FUNCTION_HOST_NAME"}
    assert azd_hooks.function_host(only_url) == HOST
    with pytest.raises(HookError, match="AZURE_FUNCTION_HOST_NAME"):
        azd_hooks.function_host({"AZURE_FUNCTION_NAME": "func-abc"})


# --- preprovision ----------------------------------------------------------------------------

def test_preprovision_creates_a_key_once_and_stores_its_public_half(tmp_path: Path) -> None:
    env = {k: v for k, v in ENV.items() if k != "VM_ADMIN_SSH_PUBLIC_KEY"}
    run = Recorder({"az keyvault show-deleted": HookError("not found")})
    azd_hooks.preprovision(env, run, root=tmp_path)
    key = tmp_path / ".azure" / "vmpool-test" / azd_hooks.SSH_KEY_NAME
    public = Path(f"{key}.pub").read_text().strip()
    assert public.startswith("ssh-ed25519 ") and public.endswith("vmpool-admin@vmpool-test")
    assert (tmp_path / ".azure" / ".gitignore").read_text() == "*\n"
    assert run.named("azd", "env", "set", "VM_ADMIN_SSH_PUBLIC_KEY") == [
        ["azd", "env", "set", "VM_ADMIN_SSH_PUBLIC_KEY", public]]
    before = key.read_bytes()
    azd_hooks.preprovision(env, run, root=tmp_path)  # again: the same key, stored again
    assert key.read_bytes() == before
    assert len(run.named("ssh-keygen")) == 1
    assert not run.named("azd", "env", "set", "KEY_VAULT_CREATE_MODE")  # default stays


def test_preprovision_keeps_a_given_key(tmp_path: Path) -> None:
    run = Recorder()
    azd_hooks.preprovision({**ENV, "AZURE_KEY_VAULT_NAME": ""}, run, root=tmp_path)
    assert run.commands == []
    assert not (tmp_path / ".azure").exists()


def test_preprovision_without_an_environment_name_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(HookError, match="AZURE_ENV_NAME"):
        azd_hooks.preprovision({}, Recorder(), root=tmp_path)


def test_a_soft_deleted_vault_is_recovered_and_a_live_one_is_not(tmp_path: Path) -> None:
    deleted = Recorder({"az keyvault show-deleted --name kv-abc": "kv-abc"})
    azd_hooks.preprovision(ENV, deleted, root=tmp_path)
    assert deleted.named("azd", "env", "set", "KEY_VAULT_CREATE_MODE") == [
        ["azd", "env", "set", "KEY_VAULT_CREATE_MODE", "recover"]]
    # Recovered (or purged): back to default, once.
    live = Recorder({"az keyvault show-deleted": HookError("not found")})
    azd_hooks.preprovision({**ENV, "KEY_VAULT_CREATE_MODE": "recover"}, live, root=tmp_path)
    assert live.named("azd", "env", "set", "KEY_VAULT_CREATE_MODE") == [
        ["azd", "env", "set", "KEY_VAULT_CREATE_MODE", "default"]]


# --- postprovision ---------------------------------------------------------------------------

def test_postprovision_publishes_this_commit_to_the_environment_storage(root: Path) -> None:
    calls: list[list[str]] = []
    azd_hooks.postprovision(ENV, Recorder(), root, publish=lambda a: calls.append(a) or 0)
    (args,) = calls
    assert args[:4] == ["--account-url", "https://stabc.blob.core.usgovcloudapi.net",
                        "--container", "agent-package"]
    base = re.search(r'__version__ = "([^"]*)"', (root / "agent" / "__init__.py").read_text())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                            capture_output=True, check=True).stdout.strip()
    assert args[4:] == ["--version", f"{base.group(1)}+{commit}"]


def test_postprovision_outside_git_stamps_the_time(tmp_path: Path, root: Path) -> None:
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "__init__.py").write_text('__version__ = "1.2.3"\n')
    run = Recorder({"git rev-parse": HookError("not a git repository")})
    calls: list[list[str]] = []
    azd_hooks.postprovision({**ENV, "AGENT_PACKAGE_CONTAINER": "pkg"}, run, tmp_path,
                            publish=lambda a: calls.append(a) or 0)
    assert calls[0][3] == "pkg"
    assert re.fullmatch(r"1\.2\.3\+\d{14}", calls[0][5])


def test_postprovision_fails_when_publishing_fails(root: Path) -> None:
    with pytest.raises(HookError, match="publishing the agent failed"):
        azd_hooks.postprovision(ENV, Recorder(), root, publish=lambda a: 1)
    with pytest.raises(HookError, match="AZURE_STORAGE_ACCOUNT_NAME"):
        azd_hooks.postprovision({}, Recorder(), root, publish=lambda a: 0)


# --- postdeploy ------------------------------------------------------------------------------

def test_postdeploy_sets_the_key_publishes_and_subscribes_the_app_host(root: Path) -> None:
    run = Recorder({
        "az keyvault secret show": "agent-key==",
        "az functionapp keys list": ["", "", "blobs-key=="],  # the host creates it a bit later
    })
    published: list[list[str]] = []
    pauses: list[float] = []
    endpoint = azd_hooks.postdeploy(ENV, run, root, publish=lambda a: published.append(a) or 0,
                                    sleep=pauses.append)
    assert endpoint == (f"https://{HOST}/runtime/webhooks/blobs?"
                        "functionName=Host.Functions.data_blob_trigger&code=blobs-key==")
    (secret,) = run.named("az", "keyvault", "secret", "show")
    assert secret[secret.index("--vault-name") + 1] == "kv-abc"
    (keys_set,) = run.named("az", "functionapp", "keys", "set")
    assert keys_set[keys_set.index("--key-name") + 1] == "vmagent"
    assert keys_set[keys_set.index("--key-value") + 1] == "agent-key=="
    assert len(published) == 1 and pauses == [10.0, 10.0]
    (create,) = run.named("az", "eventgrid", "system-topic", "event-subscription", "create")
    assert create[create.index("--endpoint") + 1] == endpoint
    assert create[create.index("--system-topic-name") + 1] == "evgt-abc"
    assert create[create.index("--subject-begins-with") + 1] == (
        "/blobServices/default/containers/data/")
    # the order matters: the key before the agents can call, the webhook last
    order = [" ".join(c[:3]) for c in run.commands if c[0] == "az"]
    assert order[0] == "az keyvault secret" and order[-1] == "az eventgrid system-topic"


def test_postdeploy_gives_up_without_the_blobs_extension_key(root: Path) -> None:
    run = Recorder({"az keyvault secret show": "agent-key"})
    pauses: list[float] = []
    with pytest.raises(HookError, match="blobs_extension"):
        azd_hooks.postdeploy({**ENV, "SYSTEM_KEY_TRIES": "3"}, run, root,
                             publish=lambda a: 0, sleep=pauses.append)
    assert len(run.named("az", "functionapp", "keys", "list")) == 3
    assert pauses == [10.0, 10.0]
    assert not run.named("az", "eventgrid")


def test_postdeploy_stops_when_the_vault_has_no_agent_key(root: Path) -> None:
    run = Recorder({"az keyvault secret show": ""})
    with pytest.raises(HookError, match="agent-function-key"):
        azd_hooks.postdeploy(ENV, run, root, publish=lambda a: 0, sleep=lambda s: None)
    assert not run.named("az", "functionapp", "keys", "set")
