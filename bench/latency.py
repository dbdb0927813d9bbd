"""Control-plane throughput and latency: `python -m bench.latency`.

Runs the real app in devhost on a private Azurite with one warm local VM and a `cp` action, and
measures without disturbing what it measures:
- upload → processing start with a warm VM, for files sent one at a time;
- per batch (100, 1,000 and 3,000 files by default, dropped at once): files/s dispatched
  (first upload → each file's work item issued) and completed (→ its job row finished),
  storage requests per file by service and by table, container or queue, activities and
  orchestrator episodes (replays) per file, and CPU seconds per file of devhost, Azurite and
  the agent (its actions included);
- the raw Azurite rates of the operations the path is made of (blob upload, queue
  send+receive+delete, table insert+read), sampled before, between and after the batches
  (median of the samples, each at least 1,000 operations), so each figure reads as a ratio of
  what the storage underneath allows on this machine at that moment.

Nothing polls the app while it works: completion is read from Azurite's own access log (the
delete that moves each original out of `data/`), which Azurite writes anyway when not silent;
the per-file records (job rows, issued items, claims, Durable histories) are read after each
batch has finished, outside the measured window. Prints the figures and writes
`bench/results/latency.json`.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import psutil

from devhost.process import DevHostProcess
from shared.pool.backends import make_backend
from shared.pool.members import parse_pool_vms
from shared.services import Services
from shared.storage import StorageConnection, ensure_resources
from tools.azurite import Azurite

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
KEY = "bench-function-key"
ACCOUNT = "devstoreaccount1"
_LINE = re.compile(r'^\S+ - - \[[^\]]+\] "(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" '
                   r'(?P<status>\d{3})')
# Durable episodes and activities, from the history the engine keeps (DurableTask numbering).
_TASK_SCHEDULED, _ORCHESTRATOR_STARTED = 4, 12


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- raw storage rates ---------------------------------------------------------------------

def raw_sample(conn: StorageConnection, ops: int) -> dict[str, float]:
    """One sample of the raw rates, `ops` operations of each kind, on fresh resources."""
    suffix = uuid.uuid4().hex[:8]
    service = conn.blob_service()
    blobs = service.create_container(f"raw-{suffix}")
    queue = conn.queue(f"raw-{suffix}")
    queue.create_queue()
    tables = conn.table_service()
    table = tables.create_table(f"raw{suffix}")
    out: dict[str, float] = {}
    try:
        start = time.perf_counter()
        for i in range(ops):
            blobs.upload_blob(f"f{i}", b"{}")
        out["blob_upload_per_s"] = ops / (time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(ops):
            queue.send_message(f"m{i}")
            message = queue.receive_message()
            queue.delete_message(message)
        out["queue_send_receive_delete_per_s"] = ops / (time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(ops):
            table.create_entity({"PartitionKey": "p", "RowKey": str(i), "v": i})
            table.get_entity("p", str(i))
        out["table_insert_read_per_s"] = ops / (time.perf_counter() - start)
    finally:  # keep Azurite's in-memory store the size the app alone makes it
        service.delete_container(blobs.container_name)
        queue.delete_queue()
        tables.delete_table(table.table_name)
    return out


def raw_median(samples: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(s[key] for s in samples), 1) for key in samples[0]}


# --- Azurite's access log ------------------------------------------------------------------

class AccessLog:
    """Azurite's request lines, read from an offset on; classified by service and resource."""

    def __init__(self, path: Path, names: Callable[[], tuple[set[str], set[str]]]) -> None:
        self.path = path
        self._names = names  # (tables, queues) Azurite holds now
        self._tables: set[str] = set()
        self._queues: set[str] = set()
        self._containers: set[str] = set()  # names looked up and found to be neither

    def offset(self) -> int:
        return self.path.stat().st_size

    def lines(self, start: int, end: int | None = None) -> list[tuple[str, str, int]]:
        """(method, path, status) of the requests logged between two offsets."""
        with self.path.open("rb") as f:
            f.seek(start)
            data = f.read() if end is None else f.read(end - start)
        out = []
        for raw in data.decode(errors="replace").splitlines():
            match = _LINE.match(raw)
            if match:
                out.append((match["method"], match["path"], int(match["status"])))
        return out

    def classify(self, path: str) -> tuple[str, str]:
        """(service, resource) of a request path: tables and queues by the names Azurite
        holds (or held: a deleted one is still known), blobs otherwise."""
        parts = path.split("?", 1)[0].split("/")
        first = unquote(parts[2]) if len(parts) > 2 and parts[1] == ACCOUNT else ""
        name = first.split("(", 1)[0]
        if name == "Tables":  # create/delete/query of tables themselves
            return "table", "(tables)"
        if name == "$batch":  # an entity-group transaction (the table service's only batch)
            return "table", "$batch"
        if name not in self._tables and first not in self._queues \
                and first not in self._containers:
            tables, queues = self._names()
            self._tables |= tables
            self._queues |= queues
        if name in self._tables or "(" in first:
            return "table", name
        if first in self._queues:
            return "queue", first
        self._containers.add(first)  # a container's name is no table's or queue's later
        return "blob", first or "(account)"

    def count(self, lines: Iterable[tuple[str, str, int]]) -> dict[str, Counter]:
        by_service: Counter = Counter()
        by_resource: Counter = Counter()
        for method, path, _status in lines:
            service, resource = self.classify(path)
            by_service[service] += 1
            by_resource[f"{service}:{resource} {method}"] += 1
        return {"service": by_service, "resource": by_resource}


def originals_moved(lines: Iterable[tuple[str, str, int]], container: str, prefix: str
                    ) -> set[str]:
    """Names of the files under `prefix` whose original left `container` (deleted, 202)."""
    head = f"/{ACCOUNT}/{container}/{prefix}"
    return {unquote(path.split("?", 1)[0][len(f"/{ACCOUNT}/{container}/"):])
            for method, path, status in lines
            if method == "DELETE" and status == 202 and path.startswith(head)}


# --- CPU of the processes ------------------------------------------------------------------

def _tree_cpu(pid: int, exclude: frozenset[int] = frozenset()) -> float:
    """CPU seconds of a process, its live descendants and the children it has reaped,
    leaving out the subtrees of `exclude` (measured on their own)."""
    try:
        root = psutil.Process(pid)
        procs = [root]
        for child in root.children():
            if child.pid not in exclude:
                procs.extend([child, *child.children(recursive=True)])
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def agent_pids(state_dir: Path) -> list[int]:
    pids = []
    for path in state_dir.glob("*.json"):
        try:
            pids.append(int(json.loads(path.read_text())["pid"]))
        except (ValueError, KeyError, OSError):
            continue
    return pids


class CpuMeter:
    """CPU seconds so far of devhost, Azurite and the agents (the local backend starts the
    agents from devhost, so they are taken out of devhost's tree and counted on their own)."""

    def __init__(self, host: DevHostProcess, azurite: Azurite, pool_dir: Path) -> None:
        self.host, self.azurite, self.pool_dir = host, azurite, pool_dir

    def read(self) -> dict[str, float]:
        agents = frozenset(agent_pids(self.pool_dir))
        host = self.host.process.pid if self.host.process else None
        azurite = self.azurite.process.pid if self.azurite.process else None
        return {"devhost": _tree_cpu(host, agents) if host else 0.0,
                "azurite": _tree_cpu(azurite) if azurite else 0.0,
                "agent": sum(_tree_cpu(pid) for pid in agents)}


# --- one run -------------------------------------------------------------------------------

def _env(azurite: Azurite, state: Path, slots: int) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return {
        "AzureWebJobsStorage": azurite.connection_string, "TASKHUB_NAME": f"bench{suffix}",
        "CALLBACK_SIGNING_KEY": "bench-key", "POOL_BACKEND": "local", "POOL_VMS": "vm01",
        "POOL_MAX_RUNNING": "1", "POOL_MIN_RUNNING": "1", "VM_SLOTS": str(slots),
        "IDLE_COOLDOWN_SECONDS": "3600",
        "BOOT_TIMEOUT_SECONDS": "60", "SCALER_SCHEDULE": "*/5 * * * * *",
        "COLLECT_SCHEDULE": "0 0 0 1 1 *", "JOB_TIMEOUT_SECONDS": "900",
        "LOCAL_STATE_DIR": str(state / "pool"), "LOCAL_AGENT_COMMAND": f"{sys.executable} -m agent",
        "LOCAL_AGENT_FUNCTION_KEY": KEY, "DEVHOST_FUNCTION_KEY": KEY,
        "DEVHOST_MASTER_KEY": "bench-master", "DEVHOST_BLOB_POLL_SECONDS": "1.0",
        "AGENT_ACTIONS": json.dumps({"process": ["cp", "{input}", "{output}"]}),
        "AGENT_WORK_DIR": str(state / "work"), "AGENT_POLL_MIN_SECONDS": "0.05",
        "AGENT_POLL_MAX_SECONDS": "0.5", "AGENT_IDLE_SECONDS": "3600",
        "AGENT_HEARTBEAT_SECONDS": "5", "PYTHONPATH": str(ROOT),
    }


def _wait_moved(log: AccessLog, since: int, container: str, prefix: str, count: int,
                timeout: float) -> None:
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    offset = since
    while len(seen) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(seen)} of {count} files under {prefix!r} finished "
                               f"in {timeout:.0f} s")
        time.sleep(0.25)
        end = log.offset()
        seen |= originals_moved(log.lines(offset, end), container, prefix)
        offset = end


def _records(services: Services, prefix: str) -> dict[str, dict[str, Any]]:
    """Per job of the batch: blob name, created, issued (first item), finished, status."""
    jobs: dict[str, dict[str, Any]] = {}
    issued: dict[str, datetime] = {}
    for row in services.table(services.settings.result_table).list_entities():
        if row["RowKey"] == "job" and str(row.get("blob", "")).startswith(prefix):
            jobs[row["PartitionKey"]] = {"blob": row["blob"], "status": row.get("status"),
                                         "finished": row.get("finishedAt")}
        elif row["RowKey"].startswith("item-") and row.get("issuedAt"):
            first = issued.get(row["PartitionKey"])
            issued[row["PartitionKey"]] = min(first, row["issuedAt"]) if first \
                else row["issuedAt"]
    for job_id, job in jobs.items():
        job["issued"] = issued.get(job_id)
    return jobs


def _histories(services: Services, hub: str, job_ids: set[str]) -> dict[str, float]:
    """Activities scheduled and orchestrator episodes per file, from the state documents
    devhost's engine keeps (in the instance rows, or in blobs when too big for a row)."""
    container = services.blobs.get_container_client(f"{hub.lower()}-durable")
    docs: list[dict[str, Any]] = []
    for row in services.table(f"{hub}Instances").list_entities():
        if row["PartitionKey"] not in job_ids:
            continue
        cells = int(row.get("DocCells") or 0)
        if cells:
            docs.append(json.loads("".join(row[f"Doc{i}"] for i in range(cells))))
        else:
            blob = f"state/{quote(row['PartitionKey'], safe='')}.json"
            docs.append(json.loads(container.download_blob(blob).readall()))
    activities = episodes = 0
    for doc in docs:
        kinds = Counter(ev.get("EventType") for ev in doc.get("history", []))
        activities += kinds[_TASK_SCHEDULED]
        episodes += kinds[_ORCHESTRATOR_STARTED]
    return {"activities_per_file": round(activities / max(len(docs), 1), 2),
            "episodes_per_file": round(episodes / max(len(docs), 1), 2),
            "histories_read": len(docs)}


def _upload(services: Services, names: list[str]) -> float:
    """Drop the files with a few writers (a collector's burst); the first upload's time."""
    data = services.blobs.get_container_client(services.settings.data_container)
    started = time.time()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda n: data.upload_blob(n, b"{}"), names))
    return started


def run_batch(services: Services, log: AccessLog, cpu: CpuMeter, hub: str, files: int,
              tag: str, timeout: float) -> dict[str, Any]:
    prefix = f"{tag}-"
    names = [f"{prefix}{i:05d}.json" for i in range(files)]
    before_cpu, before_log = cpu.read(), log.offset()
    first = _upload(services, names)
    _wait_moved(log, before_log, services.settings.data_container, prefix, files, timeout)
    # The job row is written just after the move: give the last ones a moment.
    time.sleep(1.0)
    after_log, after_cpu = log.offset(), cpu.read()
    counts = log.count(log.lines(before_log, after_log))
    jobs = _records(services, prefix)
    finished = [j for j in jobs.values() if j["finished"]]
    issued = [j["issued"] for j in jobs.values() if j["issued"]]
    start = datetime.fromtimestamp(first, tz=timezone.utc)
    dispatch_s = (max(issued) - start).total_seconds() if issued else float("nan")
    complete_s = (max(j["finished"] for j in finished) - start).total_seconds() \
        if finished else float("nan")
    issue_delays = sorted((i - start).total_seconds() for i in issued)
    total = sum(counts["service"].values())
    out = {
        "files": files, "jobs_recorded": len(jobs),
        "succeeded": sum(1 for j in jobs.values() if j["status"] == "succeeded"),
        "dispatched_files_per_s": round(len(issued) / dispatch_s, 2) if issued else 0.0,
        "completed_files_per_s": round(len(finished) / complete_s, 2) if finished else 0.0,
        "dispatch_span_s": round(dispatch_s, 2), "complete_span_s": round(complete_s, 2),
        "issue_delay_p50_s": round(_percentile(issue_delays, 0.5), 2) if issued else None,
        "requests_per_file": round(total / files, 2),
        "requests_per_file_by_service": {k: round(v / files, 2)
                                         for k, v in sorted(counts["service"].items())},
        "requests_per_file_by_resource": {k: round(v / files, 2) for k, v in
                                          counts["resource"].most_common()},
        "cpu_s_per_file": {k: round((after_cpu[k] - before_cpu[k]) / files, 4)
                           for k in after_cpu},
    }
    out["cpu_s_per_file"]["total"] = round(sum(out["cpu_s_per_file"].values()), 4)
    out.update(_histories(services, hub, set(jobs)))
    return out


def _single_latencies(services: Services, log: AccessLog, count: int) -> list[float]:
    data = services.blobs.get_container_client(services.settings.data_container)
    uploaded: dict[str, datetime] = {}
    for i in range(count):
        name = f"single-{i:03d}.json"
        since = log.offset()
        uploaded[name] = datetime.now(timezone.utc)
        data.upload_blob(name, b"{}")
        _wait_moved(log, since, services.settings.data_container, name, 1, 120)
    time.sleep(1.0)
    jobs = {j: row["blob"] for j, row in _records(services, "single-").items()}
    started: dict[str, datetime] = {}
    for claim in services.claims.table.list_entities():
        blob = jobs.get(claim["PartitionKey"])
        if blob and claim.get("claimedAt") and claim["RowKey"] == "000-001":
            started[blob] = claim["claimedAt"]
    return [(started[n] - uploaded[n]).total_seconds() for n in uploaded if n in started]


def measure(batches: list[int], singles: int, slots: int, raw_ops: int,
            timeout: float, keep_log: Path | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        state = Path(tmp)
        azurite = Azurite.start(state / "azurite", access_log=True)
        host = None
        env = _env(azurite, state, slots)
        try:
            services = Services.from_env(env)
            ensure_resources(services.settings, services.connection)
            queue_service = services.connection.queue_service()
            table_service = services.connection.table_service()
            log = AccessLog(state / "azurite" / "azurite.log",
                            lambda: ({t.name for t in table_service.list_tables()},
                                     {q.name for q in queue_service.list_queues()}))
            samples = [raw_sample(services.connection, raw_ops)]
            host = DevHostProcess(ROOT, env=env)
            env["LOCAL_AGENT_API_BASE_URL"] = host.env["LOCAL_AGENT_API_BASE_URL"] = \
                host.base_url
            host.start(timeout=120)
            cpu = CpuMeter(host, azurite, state / "pool")
            data = services.blobs.get_container_client(services.settings.data_container)
            since = log.offset()
            data.upload_blob("warmup.json", b"{}")
            _wait_moved(log, since, services.settings.data_container, "warmup", 1, 180)
            latencies = _single_latencies(services, log, singles)
            results = []
            for n, files in enumerate(batches):
                samples.append(raw_sample(services.connection, raw_ops))
                results.append(run_batch(services, log, cpu, env["TASKHUB_NAME"], files,
                                         f"batch{n}", timeout))
            samples.append(raw_sample(services.connection, raw_ops))
            raw = raw_median(samples)
            for result in results:
                result["dispatched_vs_raw_blob_upload"] = round(
                    result["dispatched_files_per_s"] / raw["blob_upload_per_s"], 4)
                result["completed_vs_raw_blob_upload"] = round(
                    result["completed_files_per_s"] / raw["blob_upload_per_s"], 4)
            return {
                "slots": slots, "singles": singles, "raw_ops_per_sample": raw_ops,
                "upload_to_start_p50_s":
                    round(statistics.median(latencies), 3) if latencies else None,
                "upload_to_start_p95_s":
                    round(_percentile(latencies, 0.95), 3) if latencies else None,
                "raw": raw, "raw_samples": [{k: round(v, 1) for k, v in s.items()}
                                            for s in samples],
                "batches": results,
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
            if keep_log is not None:
                shutil.copyfile(state / "azurite" / "azurite.log", keep_log)


def report(figures: dict[str, Any]) -> list[str]:
    lines = [f"upload → processing start, warm VM: p50 {figures['upload_to_start_p50_s']} s, "
             f"p95 {figures['upload_to_start_p95_s']} s ({figures['singles']} files)"
             ] if figures["singles"] else []
    lines += [f"raw Azurite {name}: {rate} (median of {len(figures['raw_samples'])} samples "
              f"of {figures['raw_ops_per_sample']})" for name, rate in figures["raw"].items()]
    for b in figures["batches"]:
        cpu = b["cpu_s_per_file"]
        lines += [
            f"batch of {b['files']} on {figures['slots']} slots: dispatched "
            f"{b['dispatched_files_per_s']} files/s, completed {b['completed_files_per_s']} "
            f"files/s; ÷ raw blob uploads/s: {b['dispatched_vs_raw_blob_upload']} dispatched, "
            f"{b['completed_vs_raw_blob_upload']} completed",
            f"  storage requests/file: {b['requests_per_file']} "
            f"({', '.join(f'{k} {v}' for k, v in b['requests_per_file_by_service'].items())})",
            f"  CPU s/file: {cpu['total']} (devhost {cpu['devhost']}, azurite {cpu['azurite']}, "
            f"agent {cpu['agent']}); activities/file {b['activities_per_file']}, "
            f"episodes/file {b['episodes_per_file']}; {b['succeeded']}/{b['files']} succeeded",
            "  top requests/file: " + ", ".join(
                f"{k} {v}" for k, v in list(b["requests_per_file_by_resource"].items())[:8]),
        ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="control-plane throughput through devhost")
    parser.add_argument("--batches", default="100,1000,3000",
                        help="batch sizes, comma-separated (files dropped at once)")
    parser.add_argument("--singles", type=int, default=10, help="files sent one at a time")
    parser.add_argument("--slots", type=int, default=8, help="slots of the one warm VM")
    parser.add_argument("--raw-ops", type=int, default=1000,
                        help="operations of each kind per raw-rate sample")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per batch")
    parser.add_argument("--out", type=Path, default=RESULTS / "latency.json")
    parser.add_argument("--keep-log", type=Path, help="copy Azurite's access log here")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    figures = measure(batches, args.singles, args.slots, args.raw_ops, args.timeout,
                      args.keep_log)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print("\n".join(report(figures)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
