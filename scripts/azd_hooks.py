"""The azd hooks of azure.yaml, one script for Linux, macOS and Windows alike:

    python scripts/azd_hooks.py preprovision | postprovision | postdeploy

azd runs each hook through a shell (`sh` on posix, `pwsh` on Windows); both entries call this
script, so the logic exists once. Every hook reads its inputs from the environment azd gives it
(the azd environment plus the provisioning outputs) and calls `az`, `azd` and `ssh-keygen`
found on PATH (on Windows that finds `az.cmd`).

- preprovision: make sure the pool VMs have an SSH public key (VM_ADMIN_SSH_PUBLIC_KEY, else a
  key pair in .azure/<env>/, which .azure/.gitignore keeps out of git), and pick Key Vault's
  create mode: `recover` when this environment's vault is soft-deleted (after `azd down`
  without --purge), so `azd up` brings it back instead of failing on a taken name.
- postprovision: publish the agent of this commit (scripts/publish_agent.py): a versioned
  package and release.json in the agent-package container; new VMs install it, running agents
  move to it when idle. Version: agent/__init__.py's plus the commit.
- postdeploy (also runnable by hand after `func azure functionapp publish`): set host key
  `vmagent` (what the agents present) from Key Vault secret agent-function-key, publish the agent
  again, and subscribe the blob trigger to BlobCreated events of the data container through the
  storage account's Event Grid system topic. The webhook needs the blobs_extension system key,
  which exists only once the code (with its Event Grid blob trigger) runs, so this is not Bicep.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
HOOKS = ("preprovision", "postprovision", "postdeploy")
SSH_KEY_NAME = "vmpool_admin_ed25519"


class HookError(Exception):
    """The hook cannot go on; the message says what is missing or what failed."""


# Runs a command (argv, the program looked up on PATH) and returns its standard output, stripped;
# raises HookError when it fails, unless `check=False` (then a failure gives "").
Runner = Callable[..., str]


def run_command(argv: list[str], *, check: bool = True) -> str:
    program = shutil.which(argv[0])
    if program is None:
        raise HookError(f"{argv[0]} is not on PATH")
    done = subprocess.run([program, *argv[1:]], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        if not check:
            return ""
        detail = (done.stderr or done.stdout).strip()[-2000:]
        raise HookError(f"{argv[0]} {argv[1] if len(argv) > 1 else ''} failed "
                        f"(exit {done.returncode}): {detail}")
    return done.stdout.strip()


def require(env: Mapping[str, str], *names: str) -> list[str]:
    missing = [n for n in names if not env.get(n)]
    if missing:
        raise HookError(f"{', '.join(missing)} not set: run through azd (its outputs are in "
                        "`azd env get-values`) or export them")
    return [env[n] for n in names]


def log(hook: str, text: str) -> None:
    print(f"{hook}: {text}", flush=True)


# --- preprovision ----------------------------------------------------------------------------

def ensure_ssh_key(env: Mapping[str, str], run: Runner, root: Path = ROOT) -> str | None:
    """The key file whose public half was stored in the azd env; None if one was given."""
    if env.get("VM_ADMIN_SSH_PUBLIC_KEY"):
        log("preprovision", "using VM_ADMIN_SSH_PUBLIC_KEY from the environment")
        return None
    (env_name,) = require(env, "AZURE_ENV_NAME")
    azure_dir = root / ".azure"
    key_dir = azure_dir / env_name
    key_dir.mkdir(parents=True, exist_ok=True)
    if not (azure_dir / ".gitignore").exists():
        (azure_dir / ".gitignore").write_text("*\n")
    key_file = key_dir / SSH_KEY_NAME
    if not key_file.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"vmpool-admin@{env_name}",
             "-f", str(key_file)])
    public = Path(f"{key_file}.pub").read_text().strip()
    run(["azd", "env", "set", "VM_ADMIN_SSH_PUBLIC_KEY", public])
    log("preprovision", f"created {key_file.relative_to(root)} for the pool VMs' admin user")
    return str(key_file)


def key_vault_create_mode(env: Mapping[str, str], run: Runner) -> str:
    """`recover` when the vault this environment had is soft-deleted, else `default`."""
    name = env.get("AZURE_KEY_VAULT_NAME", "")
    if not name:
        return "default"  # never provisioned: nothing to recover
    deleted = run(["az", "keyvault", "show-deleted", "--name", name, "--query", "name",
                   "-o", "tsv"], check=False)
    return "recover" if deleted == name else "default"


def preprovision(env: Mapping[str, str], run: Runner = run_command, root: Path = ROOT) -> None:
    ensure_ssh_key(env, run, root)
    mode = key_vault_create_mode(env, run)
    if mode != (env.get("KEY_VAULT_CREATE_MODE") or "default"):
        run(["azd", "env", "set", "KEY_VAULT_CREATE_MODE", mode])
    if mode == "recover":
        log("preprovision", f"Key Vault {env['AZURE_KEY_VAULT_NAME']} is soft-deleted: "
                            "provisioning recovers it")


# --- postprovision ---------------------------------------------------------------------------

def agent_version(root: Path, commit: str) -> str:
    match = re.search(r'^__version__ = "([^"]*)"$', (root / "agent" / "__init__.py").read_text(),
                      re.MULTILINE)
    if not match:
        raise HookError("agent/__init__.py has no __version__")
    return f"{match.group(1)}+{commit}"


def current_commit(run: Runner, now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                   ) -> str:
    """The short commit, or a UTC time stamp outside a git checkout (still one per deploy)."""
    commit = run(["git", "rev-parse", "--short", "HEAD"], check=False) if shutil.which(
        "git") else ""
    return commit or now().strftime("%Y%m%d%H%M%S")


def publish_arguments(env: Mapping[str, str], version: str) -> list[str]:
    """The arguments of scripts/publish_agent.py for this environment's storage account."""
    (account,) = require(env, "AZURE_STORAGE_ACCOUNT_NAME")
    suffix = env.get("AZURE_STORAGE_SUFFIX") or "core.windows.net"
    return ["--account-url", f"https://{account}.blob.{suffix}",
            "--container", env.get("AGENT_PACKAGE_CONTAINER") or "agent-package",
            "--version", version]


def publish_agent(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    from scripts import publish_agent as publisher  # noqa: PLC0415 - azure SDKs load only here

    return publisher.main(argv)  # prints why when it fails


def postprovision(env: Mapping[str, str], run: Runner = run_command, root: Path = ROOT,
                  publish: Callable[[list[str]], int] = publish_agent) -> None:
    version = agent_version(root, current_commit(run))
    if publish(publish_arguments(env, version)) != 0:
        raise HookError("publishing the agent failed")


# --- postdeploy ------------------------------------------------------------------------------

def function_host(env: Mapping[str, str]) -> str:
    """The app's host name, from the provisioning outputs (its defaultHostName: the cloud and the
    naming scheme decide it, so it is never put together here)."""
    host = env.get("AZURE_FUNCTION_HOST_NAME", "").strip()
    if not host and env.get("AZURE_FUNCTION_URL"):
        host = urlparse(env["AZURE_FUNCTION_URL"].strip()).hostname or ""
    if not host:
        raise HookError("AZURE_FUNCTION_HOST_NAME not set: run `azd provision` first (it is an "
                        "output of infra/main.bicep)")
    return host


def webhook_endpoint(host: str, function_name: str, blobs_key: str) -> str:
    return (f"https://{host}/runtime/webhooks/blobs?functionName=Host.Functions.{function_name}"
            f"&code={blobs_key}")


def wait_for_blobs_key(env: Mapping[str, str], run: Runner, tries: int,
                       sleep: Callable[[float], None], pause: float = 10.0) -> str:
    """The host creates the blobs_extension key when it first starts the Event Grid blob
    trigger, a little after the deployment: ask until it is there."""
    group, app = require(env, "AZURE_RESOURCE_GROUP", "AZURE_FUNCTION_NAME")
    for attempt in range(1, tries + 1):
        key = run(["az", "functionapp", "keys", "list", "-g", group, "-n", app, "--query",
                   "systemKeys.blobs_extension", "-o", "tsv"], check=False)
        if key:
            return key
        log("postdeploy", f"waiting for the blobs_extension system key ({attempt}/{tries})")
        if attempt < tries:
            sleep(pause)
    raise HookError("no blobs_extension system key; is data_blob_trigger deployed with source "
                    "EventGrid?")


def postdeploy(env: Mapping[str, str], run: Runner = run_command, root: Path = ROOT,
               publish: Callable[[list[str]], int] = publish_agent,
               sleep: Callable[[float], None] = time.sleep) -> str:
    """Returns the webhook endpoint subscribed (tests look at it)."""
    group, app, topic, vault = require(env, "AZURE_RESOURCE_GROUP", "AZURE_FUNCTION_NAME",
                                       "AZURE_EVENTGRID_TOPIC_NAME", "AZURE_KEY_VAULT_NAME")
    host = function_host(env)
    container = env.get("DATA_CONTAINER") or "data"
    function_name = env.get("BLOB_TRIGGER_FUNCTION") or "data_blob_trigger"
    subscription = env.get("EVENTGRID_SUBSCRIPTION_NAME") or "data-blob-created"
    try:
        tries = int(env.get("SYSTEM_KEY_TRIES") or 30)
    except ValueError:
        raise HookError("SYSTEM_KEY_TRIES must be a whole number") from None

    agent_key = run(["az", "keyvault", "secret", "show", "--vault-name", vault, "--name",
                     "agent-function-key", "--query", "value", "-o", "tsv"])
    if not agent_key:
        raise HookError(f"Key Vault {vault} has no agent-function-key secret")
    run(["az", "functionapp", "keys", "set", "-g", group, "-n", app, "--key-type",
         "functionKeys", "--key-name", "vmagent", "--key-value", agent_key, "--output", "none"])
    log("postdeploy", "host key vmagent set")

    # The agents follow the code: publish this commit's agent (they upgrade when idle).
    postprovision(env, run, root, publish)

    blobs_key = wait_for_blobs_key(env, run, max(1, tries), sleep)
    endpoint = webhook_endpoint(host, function_name, blobs_key)
    run(["az", "eventgrid", "system-topic", "event-subscription", "create", "-g", group,
         "--system-topic-name", topic, "-n", subscription, "--endpoint-type", "webhook",
         "--endpoint", endpoint, "--included-event-types", "Microsoft.Storage.BlobCreated",
         "--subject-begins-with", f"/blobServices/default/containers/{container}/",
         "--max-delivery-attempts", "30", "--event-ttl", "1440", "--output", "none"])
    log("postdeploy", f"Event Grid subscription {subscription} delivers {container}/ BlobCreated "
                      f"to {function_name} on {host}")
    return endpoint


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in HOOKS:
        print(f"usage: python scripts/azd_hooks.py {{{'|'.join(HOOKS)}}}", file=sys.stderr)
        return 2
    hook = {"preprovision": preprovision, "postprovision": postprovision,
            "postdeploy": postdeploy}[args[0]]
    try:
        hook(os.environ)
    except HookError as exc:
        print(f"{args[0]}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
