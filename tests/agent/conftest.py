"""Fixtures for the agent: a stand-in for the app's VM API, a pool row, work items, runners."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent.config import load
from agent.runner import Agent
from shared.pool.registry import PoolRegistry, VmState
from shared.settings import Settings
from shared.storage import StorageConnection, ensure_resources
from shared.workitem import WorkItem
from tools.polling import poll

REPO = Path(__file__).resolve().parents[2]
FAKE_ACTION = Path(__file__).resolve().parent / "fake_action.py"
KEY = "test-function-key"
VM = "vm07"


@dataclass
class Call:
    path: str
    key: str | None
    body: Any


@dataclass
class StandInApi:
    """Records calls to `/api/vms/...`; answers 200 unless told to fail the next calls."""

    url: str = ""
    calls: list[Call] = field(default_factory=list)
    planned: dict[str, list[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_next(self, kind: str, *statuses: int) -> None:
        """The next calls of `kind` ("done" or "idle") answer these statuses, in order."""
        with self.lock:
            self.planned.setdefault(kind, []).extend(statuses)

    def answer(self, path: str, key: str | None, raw: bytes) -> int:
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        kind = path.rsplit("/", 1)[-1]
        with self.lock:
            self.calls.append(Call(path, key, body))
            if key != KEY:
                return 401
            planned = self.planned.get(kind)
            return planned.pop(0) if planned else 200

    def done_calls(self) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.path.endswith("/done")]

    def idle_calls(self) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.path.endswith("/idle")]


@pytest.fixture()
def api() -> Iterator[StandInApi]:
    state = StandInApi()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            status = state.answer(self.path, self.headers.get("x-functions-key"),
                                  self.rfile.read(length))
            payload = json.dumps({"ok": status == 200}).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def control(tmp_path: Path) -> Path:
    folder = tmp_path / "control"
    folder.mkdir()
    (folder / "calls.log").touch()
    return folder


@pytest.fixture()
def registry(settings: Settings, connection: StorageConnection) -> PoolRegistry:
    """The pool table with this test's VM as a running member (2 slots)."""
    ensure_resources(settings, connection)
    reg = PoolRegistry(connection.table_service().get_table_client(settings.vm_table))
    reg.ensure_members([VM], slots=2)
    reg.transition(VM, VmState.RUNNING, [VmState.DEALLOCATED])
    return reg


@pytest.fixture()
def agent_env(azurite: Any, settings: Settings, registry: PoolRegistry, api: StandInApi,
              control: Path, tmp_path: Path) -> dict[str, str]:
    """`AGENT_*` variables for an agent on this test's storage names and stand-in API."""
    action = [sys.executable, str(FAKE_ACTION), "{input}", "{output}", str(control)]
    return {
        "AGENT_VM_NAME": VM,
        "AGENT_STORAGE_CONNECTION": azurite.connection_string,
        "AGENT_API_BASE_URL": api.url,
        "AGENT_FUNCTION_KEY": KEY,
        "AGENT_ACTIONS": json.dumps({"process": action, "transform": action}),
        "AGENT_ACTION_TIMEOUT_SECONDS": "60",
        "AGENT_SLOTS": "1",
        "AGENT_WORK_DIR": str(tmp_path / "work"),
        "AGENT_WORK_QUEUE": settings.work_queue,
        "AGENT_RESULTS_CONTAINER": settings.results_container,
        "AGENT_CLAIM_TABLE": settings.claim_table,
        "AGENT_VM_TABLE": settings.vm_table,
        "AGENT_POLL_MIN_SECONDS": "0.05",
        "AGENT_POLL_MAX_SECONDS": "0.2",
        "AGENT_VISIBILITY_TIMEOUT_SECONDS": "30",
        "AGENT_IDLE_SECONDS": "3600",
        "AGENT_CLAIM_STALE_SECONDS": "60",
        "AGENT_HEARTBEAT_SECONDS": "1",
        "AGENT_API_RETRY_SECONDS": "20",
    }


@dataclass
class Work:
    """Puts input blobs and work items in place, the way the app would."""

    settings: Settings
    connection: StorageConnection

    def submit(self, name: str, data: bytes, action: str = "process", step: int = 0,
               attempt: int = 1, upload: bool = True, container: str = "") -> WorkItem:
        if upload:
            self.connection.blob_service().get_blob_client(
                self.settings.data_container, name).upload_blob(data, overwrite=True)
        item = WorkItem(job_id=f"job-{uuid.uuid4().hex[:12]}", instance_id="pf-test",
                        step=step, action=action,
                        blob=f"{container or self.settings.data_container}/{name}",
                        attempt=attempt).signed("test-key")
        self.connection.queue(self.settings.work_queue).send_message(item.to_json())
        return item

    def send_raw(self, text: str) -> None:
        """A message exactly as given (not base64 encoded)."""
        self.connection.queue_service().get_queue_client(
            self.settings.work_queue).send_message(text)

    def messages_left(self) -> int:
        """Messages in the queue, visible or not."""
        props = self.connection.queue(self.settings.work_queue).get_queue_properties()
        return props.approximate_message_count

    def result(self, name: str) -> bytes:
        return self.connection.blob_service().get_blob_client(
            self.settings.results_container, name).download_blob().readall()

    def result_names(self) -> list[str]:
        container = self.connection.blob_service().get_container_client(
            self.settings.results_container)
        return [b.name for b in container.list_blobs()]


@pytest.fixture()
def work(settings: Settings, connection: StorageConnection, registry: PoolRegistry) -> Work:
    return Work(settings, connection)


@pytest.fixture()
def wait() -> Callable[..., Any]:
    return wait_for


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Poll until `predicate()` is truthy; fail the test if it never becomes so."""
    value = poll(predicate, timeout)
    if not value:
        pytest.fail(f"gave up waiting for {what or predicate}")
    return value


@pytest.fixture()
def run_agent() -> Iterator[Callable[[dict[str, str]], Any]]:
    """Start an in-process agent on a thread; every agent started is stopped at the end."""
    started: list[tuple[Any, threading.Thread]] = []

    def start(env: dict[str, str]) -> Any:
        agent = Agent(load(env))
        thread = threading.Thread(target=agent.run, daemon=True)
        thread.start()
        started.append((agent, thread))
        return agent

    yield start
    for agent, thread in started:
        agent.stop()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the agent did not stop"


@pytest.fixture()
def spawn_agent(tmp_path: Path) -> Iterator[Callable[[dict[str, str], str], subprocess.Popen]]:
    """Start `python -m agent` processes; any still running at the end are killed."""
    processes: list[subprocess.Popen] = []

    def spawn(env: dict[str, str], label: str = "agent") -> subprocess.Popen:
        log = (tmp_path / f"{label}.log").open("wb")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
        full_env.update(env)
        full_env["PYTHONPATH"] = str(REPO)
        process = subprocess.Popen([sys.executable, "-m", "agent"], cwd=REPO, env=full_env,
                                   stdout=log, stderr=subprocess.STDOUT)
        log.close()
        processes.append(process)
        return process

    yield spawn
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
