"""Agent throughput on many small files, beside the raw blob download+upload rate.

`python -m bench.agent_throughput [--files 200] [--slots 1] [--size 1024]`

Starts a private Azurite, puts N small blobs in `data/` and N work items on the queue, and runs
an in-process agent with a copy action (`cp {input} {output}`) against a local endpoint that
acknowledges every done call. The agent's rate (files/s from start to the last acknowledgement)
is printed beside the raw rate of downloading and re-uploading the same blobs with the same SDK
clients and the same concurrency, measured in the same run: their ratio is what the agent's
bookkeeping (claims, pool slots, visibility, the callback, a process per file) costs.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from agent.config import load
from agent.runner import Agent
from shared.pool.registry import PoolRegistry, VmState
from shared.settings import Settings
from shared.storage import StorageConnection, ensure_resources
from shared.workitem import WorkItem
from tools.azurite import Azurite

VM = "vm01"


class _Acks:
    """A local endpoint answering 200 to every call and counting done calls."""

    def __init__(self) -> None:
        self.done = 0
        self.lock = threading.Lock()
        acks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.path.endswith("/done"):
                    with acks.lock:
                        acks.done += 1
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self) -> int:
        with self.lock:
            return self.done

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _raw_rate(conn: StorageConnection, settings: Settings, names: list[str],
              slots: int) -> float:
    """Files/s for download + upload of each blob, `slots` at a time."""
    blobs = conn.blob_service()
    target = "raw-copy"
    blobs.create_container(target)

    def copy(name: str) -> None:
        data = blobs.get_blob_client(settings.data_container, name).download_blob().readall()
        blobs.get_blob_client(target, name + ".out").upload_blob(data, overwrite=True)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=slots) as pool:
        list(pool.map(copy, names))
    return len(names) / (time.perf_counter() - started)


def _agent_rate(conn: StorageConnection, settings: Settings, azurite: Azurite, names: list[str],
                slots: int, work_dir: Path) -> float:
    acks = _Acks()
    queue = conn.queue(settings.work_queue)
    for i, name in enumerate(names):
        item = WorkItem(job_id=f"bench-{i}", instance_id="bench", step=0, action="process",
                        blob=f"{settings.data_container}/{name}", attempt=1).signed("bench")
        queue.send_message(item.to_json())
    env = {
        "AGENT_VM_NAME": VM, "AGENT_STORAGE_CONNECTION": azurite.connection_string,
        "AGENT_API_BASE_URL": acks.url, "AGENT_FUNCTION_KEY": "bench",
        "AGENT_ACTIONS": json.dumps({"process": ["cp", "{input}", "{output}"]}),
        "AGENT_SLOTS": str(slots), "AGENT_WORK_DIR": str(work_dir),
        "AGENT_WORK_QUEUE": settings.work_queue,
        "AGENT_RESULTS_CONTAINER": settings.results_container,
        "AGENT_CLAIM_TABLE": settings.claim_table, "AGENT_VM_TABLE": settings.vm_table,
        "AGENT_POLL_MIN_SECONDS": "0.01", "AGENT_POLL_MAX_SECONDS": "0.05",
        "AGENT_IDLE_SECONDS": "0",
    }
    agent = Agent(load(env))
    thread = threading.Thread(target=agent.run, daemon=True)
    started = time.perf_counter()
    thread.start()
    try:
        while acks.count() < len(names):
            if not thread.is_alive():
                raise RuntimeError("the agent stopped early")
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
    finally:
        agent.stop()
        thread.join(timeout=60)
        acks.close()
    left = queue.get_queue_properties().approximate_message_count
    if left:
        raise RuntimeError(f"{left} messages left on the queue after all acknowledgements")
    return len(names) / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.agent_throughput",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--size", type=int, default=1024, help="bytes per file")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="agent-bench-") as tmp:
        azurite = Azurite.start(Path(tmp) / "azurite")
        try:
            env = {"AzureWebJobsStorage": azurite.connection_string,
                   "CALLBACK_SIGNING_KEY": "bench"}
            settings = Settings.from_env(env)
            conn = StorageConnection.from_env("AzureWebJobsStorage", env)
            ensure_resources(settings, conn)
            registry = PoolRegistry(conn.table_service().get_table_client(settings.vm_table))
            registry.ensure_members([VM], slots=args.slots)
            registry.transition(VM, VmState.RUNNING, [VmState.DEALLOCATED])

            data = conn.blob_service().get_container_client(settings.data_container)
            names = [f"bench/file{i:05d}.bin" for i in range(args.files)]
            payload = os.urandom(args.size)
            for name in names:
                data.upload_blob(name, payload, overwrite=True)

            raw = _raw_rate(conn, settings, names, args.slots)
            agent = _agent_rate(conn, settings, azurite, names, args.slots,
                                Path(tmp) / "work")
        finally:
            azurite.stop()

    print(f"files: {args.files} x {args.size} bytes, slots: {args.slots}, "
          f"action: cp (a process per file)")
    print(f"raw blob download+upload: {raw:8.1f} files/s")
    print(f"agent end to end:         {agent:8.1f} files/s")
    print(f"agent / raw:              {agent / raw:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
