"""Azurite SIGKILLed mid-run and restarted on the same ports (from a copy of its data folder): every
file still ends `succeeded` or in `failed/` with a reason, `data/` empties and no job row is
left open, within a bounded time and with no manual step."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from devhost.process import DevHostProcess
from shared.contracts import FAILED, SUCCEEDED
from shared.naming import failed_error_name
from shared.pool.backends import make_backend
from shared.pool.members import parse_pool_vms
from shared.services import Services
from shared.storage import ensure_resources
from tests.e2e.conftest import ROOT, App, app_env
from tools.azurite import Azurite

FILES = 12
OUTAGE_S = 20


def _settled(app: App) -> tuple[bool, str]:
    """(every file finished and accounted for, what is still open)."""
    s = app.services.settings
    try:
        jobs = app.services.jobs.list(limit=1000)
        data = app.blob_names(s.data_container)
        failed = set(app.blob_names(s.failed_container))
        archived = set(app.blob_names(s.archive_container))
    except Exception as exc:  # noqa: BLE001 - storage may still be coming back
        return False, f"storage: {type(exc).__name__}"
    open_jobs = [j.job_id for j in jobs if j.status not in (SUCCEEDED, FAILED)]
    names = {f"f{i:02d}.json" for i in range(FILES)}
    unaccounted = [n for n in names if n not in archived
                   and not (n in failed and failed_error_name(n) in failed)]
    done = not data and not open_jobs and not unaccounted and len(jobs) >= FILES
    return done, f"data={data} open={open_jobs} unaccounted={sorted(unaccounted)}"


# The settling wait below allows 900 s on a loaded 2-core machine; the suite's default 600 s
# per test would cut it short.
@pytest.mark.timeout(1200)
def test_azurite_killed_mid_run_strands_no_file(tmp_path: Path) -> None:
    folder = tmp_path / "azurite"
    azurite = Azurite.start(folder)
    ports = (azurite.blob_port, azurite.queue_port, azurite.table_port)
    env = app_env(azurite, tmp_path, E2E_SLOW_SECONDS="3", JOB_TIMEOUT_SECONDS="60")
    services = Services.from_env(env)
    ensure_resources(services.settings, services.connection)
    host = DevHostProcess(ROOT, env=env)
    env["LOCAL_AGENT_API_BASE_URL"] = host.env["LOCAL_AGENT_API_BASE_URL"] = host.base_url
    app = App(host, env)
    try:
        host.start(timeout=120)
        for i in range(FILES):
            app.upload(f"f{i:02d}.json", json.dumps({"slow": i}).encode())
        app.wait_for("work under way", lambda: len(app.services.jobs.list(limit=100)) >= 3,
                     timeout=120)
        # What was set up and uploaded must be on Azurite's disk before the kill (it saves on a
        # 5 s timer; see Azurite.wait_saved). Writes the run makes after this may still be lost.
        s = services.settings
        azurite.wait_saved([*s.containers(), *s.queues(), *s.tables(),
                            f"{s.taskhub_name}Instances", f"{s.taskhub_name.lower()}-durable",
                            *(f"f{i:02d}.json" for i in range(FILES))])
        assert any(j.status not in (SUCCEEDED, FAILED) for j in app.services.jobs.list(
            limit=100)), "the kill must come mid-run"
        azurite.process.kill()  # SIGKILL, mid-run
        azurite.process.wait(timeout=30)
        # Restart from a copy of what the dead process left on disk: only what it had saved
        # counts, nothing it still held in memory.
        copy = tmp_path / "azurite-after"
        shutil.copytree(folder, copy)
        time.sleep(OUTAGE_S)
        azurite = Azurite.start(copy, ports=ports)  # same data, same ports
        state = {"last": ""}

        def settled() -> bool:
            done, state["last"] = _settled(app)
            return done

        try:
            app.wait_for("every file to end succeeded or in failed/", settled, timeout=900,
                         every=3)
        except AssertionError as exc:
            raise AssertionError(f"{state['last']}\n{exc}") from None
        for job in app.services.jobs.list(limit=1000):
            assert job.status == SUCCEEDED or job.error, job  # a failure says why
    finally:
        host.stop()
        backend = make_backend(app.services.settings, env=env)
        for vm in parse_pool_vms(app.services.settings.pool_vms):
            try:
                backend.deallocate(vm)
            except Exception:  # noqa: BLE001, S112 - best effort cleanup of agent processes
                continue
        azurite.stop()
