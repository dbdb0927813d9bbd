"""A stand-in for the VM agent, spawned by the local backend in tests.

It does what the local backend relies on and nothing else: reads its `AGENT_*` environment
(and writes it to `env.json` in its work folder so tests can check it), optionally heartbeats
into the pool table, and on SIGTERM drains (writes `drained`) and exits 0. Test knobs, passed
through as `AGENT_STANDIN_*`: `IGNORE_TERM=1` (must be killed), `EXIT=<code>` (dies at once),
`HEARTBEAT=1` with `ROOT=<repo>` (reports itself alive through the registry).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

work = Path(os.environ["AGENT_WORK_DIR"])
work.mkdir(parents=True, exist_ok=True)
(work / "env.json").write_text(json.dumps(
    {k: v for k, v in os.environ.items() if k.startswith("AGENT_")}))
if os.environ.get("AGENT_STANDIN_EXIT"):
    sys.exit(int(os.environ["AGENT_STANDIN_EXIT"]))

stopping = False


def on_term(signum: int, frame: object) -> None:
    global stopping
    if os.environ.get("AGENT_STANDIN_IGNORE_TERM") == "1":
        (work / "term-ignored").write_text("1")
        return
    stopping = True


signal.signal(signal.SIGTERM, on_term)

if os.environ.get("AGENT_STANDIN_HEARTBEAT") == "1":
    sys.path.insert(0, os.environ["AGENT_STANDIN_ROOT"])
    from azure.data.tables import TableClient

    from shared.pool.registry import PoolRegistry

    table = TableClient.from_connection_string(os.environ["AGENT_STORAGE_CONNECTION"],
                                               os.environ["AGENT_VM_TABLE"])
    PoolRegistry(table).heartbeat(os.environ["AGENT_VM_NAME"], {"private_ip": "127.0.0.1"})

(work / "ready").write_text(str(os.getpid()))
deadline = time.monotonic() + 120  # never outlive a test run by much
while not stopping and time.monotonic() < deadline:
    time.sleep(0.05)
(work / "drained").write_text("1")
sys.exit(0)
