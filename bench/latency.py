"""Control-plane latency: `python -m bench.latency`.

Runs the real app in devhost on a private Azurite with a local pool and a no-op action, and
measures, in one run:
- upload → processing start (the agent's claim) with a warm VM, for files sent one at a time;
- files per second dispatched and completed for a batch dropped at once;
- beside them, the raw Azurite rates of the operations the path is made of (blob upload,
  queue send+receive+delete, table insert+read), so the figures can be read as a ratio of what
  the storage underneath allows.
Prints the figures and writes `bench/results/latency.json`.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import requests

from devhost.process import DevHostProcess
from shared.pool.backends import make_backend
from shared.pool.members import parse_pool_vms
from shared.services import Services
from shared.storage import StorageConnection, ensure_resources
from tools.azurite import Azurite
from tools.polling import poll

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
KEY = "bench-function-key"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def raw_rates(conn: StorageConnection, count: int) -> dict[str, float]:
    """Operations per second of the storage calls a file's path is made of."""
    suffix = uuid.uuid4().hex[:8]
    blobs = conn.blob_service().create_container(f"raw-{suffix}")
    queue = conn.queue(f"raw-{suffix}")
    queue.create_queue()
    table = conn.table_service().create_table(f"raw{suffix}")
    out: dict[str, float] = {}
    start = time.perf_counter()
    for i in range(count):
        blobs.upload_blob(f"f{i}", b"x" * 1024)
    out["blob_upload_per_s"] = count / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(count):
        queue.send_message(f"m{i}")
        message = queue.receive_message()
        queue.delete_message(message)
    out["queue_send_receive_delete_per_s"] = count / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(count):
        table.create_entity({"PartitionKey": "p", "RowKey": str(i), "v": i})
        table.get_entity("p", str(i))
    out["table_insert_read_per_s"] = count / (time.perf_counter() - start)
    return out


def _env(azurite: Azurite, state: Path, slots: int) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return {
        "AzureWebJobsStorage": azurite.connection_string, "TASKHUB_NAME": f"bench{suffix}",
        "CALLBACK_SIGNING_KEY": "bench-key", "POOL_BACKEND": "local", "POOL_VMS": "vm01",
        "POOL_MAX_RUNNING": "1", "POOL_MIN_RUNNING": "1", "VM_SLOTS": str(slots),
        "IDLE_COOLDOWN_SECONDS": "3600",
        "BOOT_TIMEOUT_SECONDS": "60", "SCALER_SCHEDULE": "*/5 * * * * *",
        "COLLECT_SCHEDULE": "0 0 0 1 1 *", "JOB_TIMEOUT_SECONDS": "300",
        "LOCAL_STATE_DIR": str(state / "pool"), "LOCAL_AGENT_COMMAND": f"{sys.executable} -m agent",
        "LOCAL_AGENT_FUNCTION_KEY": KEY, "DEVHOST_FUNCTION_KEY": KEY,
        "DEVHOST_MASTER_KEY": "bench-master", "DEVHOST_BLOB_POLL_SECONDS": "0.2",
        "AGENT_ACTIONS": json.dumps({"process": ["cp", "{input}", "{output}"]}),
        "AGENT_WORK_DIR": str(state / "work"), "AGENT_POLL_MIN_SECONDS": "0.05",
        "AGENT_POLL_MAX_SECONDS": "0.2", "AGENT_IDLE_SECONDS": "3600",
        "AGENT_HEARTBEAT_SECONDS": "5", "PYTHONPATH": str(ROOT),
    }


def _wait(check: Any, timeout: float, what: str) -> Any:
    value = poll(check, timeout)
    if not value:
        raise TimeoutError(f"timed out waiting for {what}")
    return value


def measure(files: int, singles: int, slots: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        state = Path(tmp)
        azurite = Azurite.start(state / "azurite")
        host = None
        try:
            env = _env(azurite, state, slots)
            services = Services.from_env(env)
            ensure_resources(services.settings, services.connection)
            raw = raw_rates(services.connection, 200)
            host = DevHostProcess(ROOT, env=env)
            env["LOCAL_AGENT_API_BASE_URL"] = host.env["LOCAL_AGENT_API_BASE_URL"] = \
                host.base_url
            host.start(timeout=120)
            session = requests.Session()
            session.headers["x-functions-key"] = KEY
            data = services.blobs.get_container_client(services.settings.data_container)

            def succeeded() -> int:
                jobs = session.get(f"{host.base_url}/api/jobs",
                                   params={"status": "succeeded", "limit": "1000"},
                                   timeout=30).json()["jobs"]
                return len(jobs)

            data.upload_blob("warmup.json", b"{}")
            _wait(lambda: succeeded() >= 1, 180, "the warm-up file")
            latencies = []
            for i in range(singles):
                name = f"single-{i:03d}.json"
                uploaded = datetime.now(timezone.utc)
                data.upload_blob(name, b"{}")
                _wait(lambda n=i: succeeded() >= n + 2, 60, f"file {name}")
                claims = [c for c in services.claims.table.list_entities()
                          if c.get("vm") and c["RowKey"] == "000-001"]
                started = max(c["claimedAt"] for c in claims)
                latencies.append((started - uploaded).total_seconds())
            before = succeeded()
            start = time.perf_counter()
            for i in range(files):
                data.upload_blob(f"batch-{i:04d}.json", b"{}")
            _wait(lambda: succeeded() >= before + files, 600, "the batch")
            elapsed = time.perf_counter() - start
            return {
                "files": files, "slots": slots, "singles": singles,
                "upload_to_start_p50_s": round(statistics.median(latencies), 3),
                "upload_to_start_p95_s": round(_percentile(latencies, 0.95), 3),
                "batch_files_per_s": round(files / elapsed, 2),
                "raw": {k: round(v, 1) for k, v in raw.items()},
                "batch_vs_raw_blob_upload": round(files / elapsed / raw["blob_upload_per_s"], 4),
            }
        finally:
            if host is not None:
                host.stop()
                backend = make_backend(Services.from_env(env).settings, env=env)
                for vm in parse_pool_vms("vm01"):
                    try:
                        backend.deallocate(vm)
                    except Exception:  # noqa: BLE001, S112 - best effort cleanup
                        continue
            azurite.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="control-plane latency through devhost")
    parser.add_argument("--files", type=int, default=100, help="files in the batch")
    parser.add_argument("--singles", type=int, default=10, help="files sent one at a time")
    parser.add_argument("--slots", type=int, default=4, help="slots of the one warm VM")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    figures = measure(args.files, args.singles, args.slots)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latency.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"upload → processing start, warm VM: p50 {figures['upload_to_start_p50_s']} s, "
          f"p95 {figures['upload_to_start_p95_s']} s ({args.singles} files)")
    print(f"batch of {args.files} files on {args.slots} slots: "
          f"{figures['batch_files_per_s']} files/s")
    for name, rate in figures["raw"].items():
        print(f"raw Azurite {name}: {rate}")
    print(f"batch files/s ÷ raw blob uploads/s: {figures['batch_vs_raw_blob_upload']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
