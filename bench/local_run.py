"""`python -m bench.local_run`: VM starts per file on a real local run.

Starts a private Azurite, `function_app.py` in devhost with the local pool of `make run`
(settings from `local.settings.json`, agents running the sample action), drops files into
`data/` in bursts (`--files` in bursts of `--burst` every `--every` seconds, the way a collector
delivers them), waits until every job has finished, and prints the files, the VM starts the
scaler made (from its `pool.scaled` events) and VM starts per file. A pool that deallocates
between bursts and starts again shows here as starts per file well above VMs / files.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import requests

from devhost.process import DevHostProcess, free_port
from shared.pool.backends import make_backend
from shared.pool.members import parse_pool_vms
from shared.services import Services
from shared.storage import ensure_resources
from tools.azurite import PROJECT_ROOT, Azurite
from tools.run_local import load_local_settings

FUNCTION_KEY = "bench-function-key"


def bench_env(azurite: Azurite, state: Path, port: int) -> dict[str, str]:
    env = {**load_local_settings(),
           "AzureWebJobsStorage": azurite.connection_string,
           "COLLECT_SCHEDULE": "0 0 0 1 1 *",  # only the files this run drops
           "DEVHOST_FUNCTION_KEY": FUNCTION_KEY, "DEVHOST_MASTER_KEY": uuid.uuid4().hex,
           "LOCAL_AGENT_FUNCTION_KEY": FUNCTION_KEY,
           "LOCAL_AGENT_API_BASE_URL": f"http://127.0.0.1:{port}",
           "LOCAL_STATE_DIR": str(state / "pool"),
           "LOCAL_AGENT_COMMAND": f"{sys.executable} -m agent",
           "AGENT_ACTIONS": json.dumps({"process": [
               sys.executable, str(PROJECT_ROOT / "tools" / "sample_action.py"),
               "{input}", "{output}"]}),
           "AGENT_WORK_DIR": str(state / "work"),
           "PYTHONPATH": str(PROJECT_ROOT)}
    return env


def vm_starts(services: Services, since: datetime) -> int:
    """VM starts the scaler made since `since`, from its `pool.scaled` events."""
    starts = 0
    for row in services.log.day(kind="pool.scaled", limit=100_000):
        if datetime.fromisoformat(row["at"]) >= since:
            starts += len(row["data"].get("start", []))
    return starts


def finished(services: Services) -> tuple[int, int]:
    """(jobs finished, jobs still open) from the job rows."""
    rows = list(services.jobs.list(limit=100_000))
    done = sum(1 for job in rows if job.status in ("succeeded", "failed"))
    return done, len(rows) - done


def run(files: int, burst: int, every: float, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-local-") as tmp:
        state = Path(tmp)
        azurite = Azurite.start(state / "azurite")
        port = free_port()
        env = bench_env(azurite, state, port)
        services = Services.from_env(env)
        ensure_resources(services.settings, services.connection)
        host = DevHostProcess(PROJECT_ROOT, env=env, port=port)
        began = datetime.now(timezone.utc) - timedelta(seconds=1)
        t0 = time.monotonic()
        try:
            host.start(timeout=120)
            data = services.blobs.get_container_client(services.settings.data_container)
            for index in range(files):
                body = json.dumps({"values": [index, index + 1, index * 2]}).encode()
                data.upload_blob(f"bench/file-{index:05d}.json", body, overwrite=True)
                if (index + 1) % burst == 0 and index + 1 < files:
                    time.sleep(every)
            deadline = time.monotonic() + timeout
            done, open_ = finished(services)
            while time.monotonic() < deadline and (done < files or open_):
                time.sleep(2)
                done, open_ = finished(services)
            elapsed = time.monotonic() - t0
            starts = vm_starts(services, began)
        finally:
            host.stop()
            backend = make_backend(services.settings, env=env)
            for vm in parse_pool_vms(services.settings.pool_vms):
                try:
                    backend.deallocate(vm)
                except Exception:  # noqa: BLE001, S112 - best effort cleanup of agent processes
                    continue
            azurite.stop()
            requests.Session().close()
    return {"files": files, "finished": done, "open": open_, "burst": burst, "every_s": every,
            "vm_starts": starts, "vm_starts_per_file": round(starts / files, 3),
            "seconds": round(elapsed, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.local_run", description=__doc__)
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--burst", type=int, default=10, help="files per burst")
    parser.add_argument("--every", type=float, default=8.0, help="seconds between bursts")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds to wait for the last job after the last burst")
    args = parser.parse_args(argv)
    result = run(args.files, args.burst, args.every, args.timeout)
    print(json.dumps(result))
    return 0 if result["finished"] == args.files and not result["open"] else 1


if __name__ == "__main__":
    sys.exit(main())
