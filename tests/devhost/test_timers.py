"""Timer triggers: runOnStartup, a short schedule, past-due after downtime, admin invoke."""
from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient, ContainerClient

from devhost.errors import ConfigError
from devhost.testing import running_host
from devhost.timers import Schedule

MASTER = "test-master-key"


@pytest.fixture()
def timer_env(host_env: dict[str, str], suffix: str) -> dict[str, str]:
    env = {**host_env, "OUT_CONTAINER": f"timers-{suffix}", "FAST_SCHEDULE": "*/1 * * * * *"}
    out(env).create_container()
    return env


def out(env: dict[str, str]) -> ContainerClient:
    return BlobServiceClient.from_connection_string(
        env["AzureWebJobsStorage"]).get_container_client(env["OUT_CONTAINER"])


def fires(env: dict[str, str], prefix: str) -> list[dict[str, Any]]:
    box = out(env)
    return [json.loads(box.download_blob(b.name).readall())
            for b in box.list_blobs(name_starts_with=prefix)]


def test_run_on_startup_then_on_schedule(apps: Path, timer_env: dict[str, str],
                                         eventually: Callable[..., Any]) -> None:
    with running_host(apps / "timer_app", timer_env):
        got = eventually(lambda: len(fires(timer_env, "fast/")) >= 3 and fires(timer_env, "fast/"),
                         what="three fast ticks")
    assert all(f["past_due"] is False for f in got)
    assert fires(timer_env, "yearly/") == []


def test_missed_occurrence_fires_once_as_past_due(apps: Path, timer_env: dict[str, str],
                                                  eventually: Callable[..., Any]) -> None:
    service = BlobServiceClient.from_connection_string(timer_env["AzureWebJobsStorage"])
    try:
        service.create_container("azure-webjobs-hosts")
    except ResourceExistsError:
        pass
    missed = datetime.now(timezone.utc) - timedelta(hours=1)
    status_blob = f"timers/{timer_env['AzureFunctionsWebHost__hostid']}/yearly_timer/status"
    service.get_blob_client("azure-webjobs-hosts", status_blob).upload_blob(json.dumps(
        {"Last": (missed - timedelta(days=365)).isoformat(), "Next": missed.isoformat(),
         "LastUpdated": missed.isoformat()}))
    with running_host(apps / "timer_app", timer_env):
        got = eventually(lambda: fires(timer_env, "yearly/"), what="past-due fire")
    assert len(got) == 1
    assert got[0]["past_due"] is True
    assert got[0]["status"]["Next"] == missed.isoformat()
    saved = json.loads(service.get_blob_client("azure-webjobs-hosts", status_blob)
                       .download_blob().readall())
    assert datetime.fromisoformat(saved["Next"]) > datetime.now(timezone.utc)
    # the next start finds nothing past due
    with running_host(apps / "timer_app", timer_env):
        eventually(lambda: len(fires(timer_env, "fast/")) >= 1, what="a fast tick")
    assert len(fires(timer_env, "yearly/")) == 1


def test_admin_invoke_of_a_timer_and_its_errors(apps: Path, timer_env: dict[str, str],
                                                eventually: Callable[..., Any]) -> None:
    with running_host(apps / "timer_app", timer_env) as threaded:
        base = threaded.host.base_url
        headers = {"x-functions-key": MASTER}
        ok = requests.post(f"{base}/admin/functions/yearly_timer", json={"input": None},
                           headers=headers, timeout=30)
        assert ok.status_code == 202
        got = eventually(lambda: fires(timer_env, "yearly/"), what="admin-invoked fire")
        assert got[0]["past_due"] is False
        missing = requests.post(f"{base}/admin/functions/nope", json={}, headers=headers,
                                timeout=30)
        assert missing.status_code == 404
        bad = requests.post(f"{base}/admin/functions/yearly_timer", data=b"{oops",
                            headers=headers, timeout=30)
        assert bad.status_code == 400
        wrong_key = requests.post(f"{base}/admin/functions/yearly_timer", json={},
                                  headers={"x-functions-key": "test-function-key"}, timeout=30)
        assert wrong_key.status_code == 401
    assert len(fires(timer_env, "yearly/")) == 1


def test_schedule_parsing() -> None:
    start = datetime(2026, 1, 1, 0, 0, 1, tzinfo=timezone.utc)
    assert Schedule("*/15 * * * * *", "f").next_after(start) == start.replace(second=15)
    assert Schedule("00:05:00", "f").next_after(start) == start + timedelta(minutes=5)
    for bad in ("* * * * *", "61 * * * * *", "nonsense"):
        with pytest.raises(ConfigError):
            Schedule(bad, "f")
