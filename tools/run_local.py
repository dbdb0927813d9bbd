"""`make run`: the whole app locally — Azurite, the function host (devhost) on port 7071, and a
local pool whose VMs are agent processes — with a live view of the pool and the jobs.

Ctrl-C stops everything, agents included. Settings come from `local.settings.json`; variables
already set in the environment win.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from typing import Any

import requests
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from devhost.process import DevHostProcess, HostProcessError
from shared.pool.backends import make_backend
from shared.pool.members import parse_pool_vms
from shared.settings import SettingError, Settings
from tools.azurite import PROJECT_ROOT, Azurite, AzuriteError, port_open

DEFAULT_ACTIONS = json.dumps({
    "process": [sys.executable, str(PROJECT_ROOT / "tools" / "sample_action.py"), "{input}",
                "{output}"]})


def load_local_settings() -> dict[str, str]:
    data = json.loads((PROJECT_ROOT / "local.settings.json").read_text())
    return {k: str(v) for k, v in data.get("Values", {}).items()}


def local_env(port: int) -> dict[str, str]:
    """Settings for the host and its agents: fixed keys for this run (enforced), local pool
    folders."""
    function_key = os.environ.get("DEVHOST_FUNCTION_KEY") or secrets.token_urlsafe(24)
    env = {**load_local_settings(), **os.environ}
    env.update({
        "DEVHOST_FUNCTION_KEY": function_key,
        "DEVHOST_MASTER_KEY": os.environ.get("DEVHOST_MASTER_KEY") or secrets.token_urlsafe(24),
        "DEVHOST_ENABLE_AUTH": "true",  # `make run` checks keys as Azure does
        "LOCAL_AGENT_FUNCTION_KEY": function_key,
        "LOCAL_AGENT_API_BASE_URL": f"http://127.0.0.1:{port}",
        "LOCAL_STATE_DIR": env.get("LOCAL_STATE_DIR") or str(PROJECT_ROOT / ".local-pool"),
        "LOCAL_AGENT_COMMAND": env.get("LOCAL_AGENT_COMMAND")
        or f"{sys.executable} -m agent",
    })
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("AGENT_ACTIONS", DEFAULT_ACTIONS)
    env.setdefault("AGENT_WORK_DIR", str(PROJECT_ROOT / ".local-pool" / "work"))
    return env


def _get(base: str, key: str, path: str) -> Any:
    try:
        response = requests.get(f"{base}{path}", headers={"x-functions-key": key}, timeout=5)
        return response.json() if response.ok else None
    except (requests.RequestException, ValueError):
        return None


def render(base: str, key: str) -> Group:
    pool = _get(base, key, "/api/pool") or {}
    jobs = (_get(base, key, "/api/jobs?limit=12") or {}).get("jobs", [])
    vms = Table(title=f"pool ({pool.get('backend', '?')}): queued {pool.get('queued', '?')}, "
                      f"in flight {pool.get('inFlight', '?')}", expand=True)
    for column in ("vm", "state", "busy/slots", "last heartbeat", "reason"):
        vms.add_column(column)
    for vm in pool.get("vms", []):
        vms.add_row(vm["name"], vm["state"], f"{vm['busy']}/{vm['slots']}",
                    (vm.get("lastHeartbeat") or "-")[11:19], (vm.get("reason") or "")[:40])
    table = Table(title="latest jobs", expand=True)
    for column in ("blob", "status", "vm", "attempts", "bytes in/out", "ms"):
        table.add_column(column)
    for job in jobs:
        table.add_row(job["blob"][-48:], job["status"], job.get("vm") or "-",
                      str(job["attempts"]), f"{job['bytesIn']}/{job['bytesOut']}",
                      str(job.get("durationMs") or ""))
    return Group(vms, table)


def stop_agents(env: dict[str, str]) -> None:
    """Deallocate every local VM still running (the host is gone; its agents must go too)."""
    try:
        settings = Settings.from_env(env)
        backend = make_backend(settings, env=env)
    except (SettingError, ValueError) as exc:
        print(f"could not stop agents: {exc}", file=sys.stderr)
        return
    for vm in parse_pool_vms(settings.pool_vms):
        try:
            if backend.power_state(vm) not in ("deallocated", "stopped"):
                backend.deallocate(vm)
        except Exception as exc:  # noqa: BLE001 - best effort on the way out
            print(f"could not stop {vm}: {exc}", file=sys.stderr)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(
            backend.power_state(vm) not in ("deallocated", "stopped")
            for vm in parse_pool_vms(settings.pool_vms)):
        time.sleep(0.5)


MAX_RESTARTS = 3  # within RESTART_WINDOW_S; a host that keeps dying is stopped for good
RESTART_WINDOW_S = 300.0


class HostDied(RuntimeError):
    """The function host exited and was not (or could no longer be) restarted."""


class HostWatch:
    """Notices a dead host: reports it, stops its agents (they would call a host that is
    gone), and starts it again, unless it died too often lately."""

    def __init__(self, host: DevHostProcess, env: dict[str, str], console: Console) -> None:
        self.host, self.env, self.console = host, env, console
        self.deaths: list[float] = []

    def check(self) -> None:
        process = self.host.process
        if process is None or process.poll() is None:
            return
        code = process.returncode
        now = time.monotonic()
        self.deaths = [t for t in self.deaths if now - t < RESTART_WINDOW_S] + [now]
        self.console.print(f"[bold red]The function host exited with code {code}[/]; "
                           "stopping its agents.\n" + self.host.output()[-2000:])
        stop_agents(self.env)
        if len(self.deaths) > MAX_RESTARTS:
            raise HostDied(f"the host died {len(self.deaths)} times in "
                           f"{RESTART_WINDOW_S:.0f}s; stopping")
        self.console.print("Restarting the function host…")
        self.host.start(timeout=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=7071)
    parser.add_argument("--no-live", action="store_true", help="print status lines instead")
    args = parser.parse_args(argv)
    env = local_env(args.port)
    try:
        Settings.from_env(env)
    except SettingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    console = Console()
    azurite = None
    if port_open(10000):
        console.print("Storage emulator already listening on 10000; using it.")
    else:
        try:
            azurite = Azurite.start(PROJECT_ROOT / ".azurite", ports=(10000, 10001, 10002))
        except AzuriteError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        console.print("Azurite on 127.0.0.1:10000-10002 (data in .azurite/)")
    # Strict indexing: a broken app stops `make run` with its error instead of serving 404s.
    host = DevHostProcess(PROJECT_ROOT, env=env, port=args.port, strict=True)
    status = 0
    try:
        host.start(timeout=120)
        console.print(host.output())
        console.print(f"Function key: {env['DEVHOST_FUNCTION_KEY']}  (x-functions-key header)")
        console.print(f"Dashboard: {host.base_url}/api/dashboard  (it asks for the key above)")
        console.print("Ctrl-C stops the host, the local VMs and Azurite.")
        base, key = host.base_url, env["DEVHOST_FUNCTION_KEY"]
        watch = HostWatch(host, env, console)
        if args.no_live or not sys.stdout.isatty():
            while True:
                watch.check()
                pool = _get(base, key, "/api/pool") or {}
                states = ", ".join(f"{v['name']}={v['state']}({v['busy']})"
                                   for v in pool.get("vms", []))
                console.print(f"{time.strftime('%H:%M:%S')} queued={pool.get('queued')} "
                              f"{states}")
                time.sleep(10)
        with Live(render(base, key), console=console, refresh_per_second=1) as live:
            while True:
                time.sleep(2)
                watch.check()
                live.update(render(base, key))
    except KeyboardInterrupt:
        console.print("\nStopping…")
    except (HostDied, HostProcessError) as exc:
        console.print(f"[bold red]{exc}[/]")
        status = 1
    finally:
        host.stop()
        stop_agents(env)
        if azurite is not None:
            azurite.stop()
    return status


if __name__ == "__main__":
    sys.exit(main())
