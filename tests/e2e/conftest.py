"""End-to-end fixtures: the real function_app.py in devhost, on Azurite, with a local pool of
agent processes, and an HTTP client that sends the function key."""
from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from devhost.process import DevHostProcess
from shared.pool.backends import make_backend
from shared.pool.members import parse_pool_vms
from shared.services import Services
from shared.storage import ensure_resources
from tools.azurite import Azurite
from tools.polling import poll

ROOT = Path(__file__).resolve().parent.parent.parent
HERE = Path(__file__).resolve().parent
FUNCTION_KEY = "e2e-function-key"
MASTER_KEY = "e2e-master-key"


class App:
    """A running app: its base URL, a keyed HTTP session, its services and its settings."""

    def __init__(self, host: DevHostProcess, env: dict[str, str]) -> None:
        self.host = host
        self.env = env
        self.base = host.base_url
        self.http = requests.Session()
        self.http.headers["x-functions-key"] = FUNCTION_KEY
        self.services = Services.from_env(env)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.http.get(self.base + path, timeout=30, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return self.http.post(self.base + path, timeout=30, **kw)

    def upload(self, name: str, body: bytes, metadata: dict[str, str] | None = None) -> None:
        self.services.blobs.get_blob_client(self.services.settings.data_container, name) \
            .upload_blob(body, overwrite=True, metadata=metadata)

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 120,
                 every: float = 0.5) -> Any:
        value = poll(check, timeout, every)
        if not value:
            raise AssertionError(f"timed out waiting for {what}\n--- host output ---\n"
                                 f"{self.host.output()[-6000:]}")
        return value

    def jobs(self, **params: str) -> list[dict]:
        response = self.get("/api/jobs", params={"limit": "1000", **params})
        assert response.status_code == 200, response.text
        return response.json()["jobs"]

    def pool(self) -> dict:
        return self.get("/api/pool").json()

    def blob_names(self, container: str) -> list[str]:
        client = self.services.blobs.get_container_client(container)
        return sorted(b.name for b in client.list_blobs())


def app_env(azurite: Azurite, tmp_path: Path, **overrides: str) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    env = {
        "AzureWebJobsStorage": azurite.connection_string,
        "TASKHUB_NAME": f"e2e{suffix}",
        "DATA_CONTAINER": f"data-{suffix}", "RESULTS_CONTAINER": f"results-{suffix}",
        "ARCHIVE_CONTAINER": f"archive-{suffix}", "FAILED_CONTAINER": f"failed-{suffix}",
        "WORK_QUEUE": f"work-{suffix}", "VM_TABLE": f"tblvm{suffix}",
        "LOG_TABLE": f"tbllog{suffix}", "RESULT_TABLE": f"tblresult{suffix}",
        "RUN_TABLE": f"tblrun{suffix}", "CHANGE_TABLE": f"tblchange{suffix}",
        "CLAIM_TABLE": f"tblclaim{suffix}", "IDEMPOTENCY_TABLE": f"tblidem{suffix}",
        "WEBHOOK_TABLE": f"tblhook{suffix}",
        "CALLBACK_SIGNING_KEY": "e2e-signing-key",
        "POOL_BACKEND": "local", "POOL_VMS": "vm01..vm03", "POOL_MAX_RUNNING": "3",
        "VM_SLOTS": "1", "BOOT_TIMEOUT_SECONDS": "15", "IDLE_COOLDOWN_SECONDS": "3",
        "HEARTBEAT_TIMEOUT_SECONDS": "10", "JOB_TIMEOUT_SECONDS": "90",
        "RETRY_BACKOFF_SECONDS": "1", "MAX_ATTEMPTS": "3", "PIPELINE_ACTIONS": "process",
        "SCALER_SCHEDULE": "*/2 * * * * *", "COLLECT_SCHEDULE": "0 0 0 1 1 *",
        "COLLECT_SOURCE": "sample", "KEEP_ORIGINALS": "true",
        "LOCAL_STATE_DIR": str(tmp_path / "pool"), "LOCAL_STOP_GRACE_SECONDS": "10",
        "LOCAL_AGENT_COMMAND": f"{sys.executable} {HERE / 'agent_launcher.py'}",
        "LOCAL_AGENT_FUNCTION_KEY": FUNCTION_KEY,
        "DEVHOST_FUNCTION_KEY": FUNCTION_KEY, "DEVHOST_MASTER_KEY": MASTER_KEY,
        "DEVHOST_ENABLE_AUTH": "true",  # keys checked as on Azure, so 401s are tested
        "DEVHOST_BLOB_POLL_SECONDS": "0.5",
        "AGENT_ACTIONS": json.dumps({
            name: [sys.executable, str(HERE / "step_action.py"), name, "{input}", "{output}"]
            for name in ("process", "extract", "transform")}),
        "AGENT_WORK_DIR": str(tmp_path / "work"), "AGENT_POLL_MIN_SECONDS": "0.1",
        "AGENT_POLL_MAX_SECONDS": "0.5", "AGENT_IDLE_SECONDS": "2",
        "AGENT_VISIBILITY_TIMEOUT_SECONDS": "6", "AGENT_HEARTBEAT_SECONDS": "1",
        "AGENT_CLAIM_STALE_SECONDS": "10", "AGENT_API_RETRY_SECONDS": "30",
        "PYTHONPATH": str(ROOT),
    }
    env.update(overrides)
    return env


@pytest.fixture()
def start_app(azurite: Azurite, tmp_path: Path) -> Iterator[Callable[..., App]]:
    """`start_app(**settings)` runs the app; everything it started is stopped afterwards."""
    started: list[App] = []

    def start(**overrides: str) -> App:
        env = app_env(azurite, tmp_path, **overrides)
        services = Services.from_env(env)
        ensure_resources(services.settings, services.connection)
        host = DevHostProcess(ROOT, env=env)
        env["LOCAL_AGENT_API_BASE_URL"] = host.env["LOCAL_AGENT_API_BASE_URL"] = host.base_url
        app = App(host, env)
        started.append(app)
        host.start(timeout=120)
        return app

    yield start
    for app in started:
        app.host.stop()
        backend = make_backend(app.services.settings, env=app.env)
        settings = app.services.settings
        spot = parse_pool_vms(settings.pool_spot_vms) if settings.pool_spot_vms else []
        for vm in [*parse_pool_vms(settings.pool_vms), *spot]:
            try:
                backend.deallocate(vm)
            except Exception:  # noqa: BLE001, S112 - best effort cleanup of agent processes
                continue
