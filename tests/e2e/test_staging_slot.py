"""The staging-slot release, as topology: a production host and a staging host of the same app on
the same storage, each with the slot-sticky settings `infra/main.bicep` gives its slot (read
from the template here, not retyped), then the gate `scripts/wait_for_drain.py` and a swap.

While both slots run, only production collects data and drives the pool: every file is
processed exactly once, by production's task hub; the staging slot answers its API but its
disabled triggers never fire and its hub stays empty. The gate returns only once nothing runs;
after the swap the new production continues on production's task hub and processes new work.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import requests

from devhost.process import DevHostProcess
from scripts import bicep as br
from shared.pool.backends import make_backend
from shared.pool.members import parse_pool_vms
from shared.services import Services
from shared.storage import ensure_resources
from tests.e2e.conftest import FUNCTION_KEY, ROOT, App, app_env
from tests.e2e.test_pipeline import _executions
from tools.azurite import Azurite

DURABLE_KEY = "e2e-durabletask-key"


def slot_settings() -> dict[str, dict[str, str]]:
    """{"production": ..., "staging": ...}: the sticky settings of each slot in main.bicep."""
    main = br.load(ROOT / "infra" / "main.bicep")
    params = br.parameters(main)
    disabled = params["stagingDisabledFunctions"].default
    text = (ROOT / "infra" / "main.bicep").read_text()
    out: dict[str, dict[str, str]] = {}
    for slot, var, flag in (("production", "productionSticky", "false"),
                            ("staging", "stagingSticky", "true")):
        union = br.variable(main, var)["function"]
        assert union["type"] == "union"
        literal, rest = union["parameters"]["arg_1"], union["parameters"]["arg_2"]
        # A value naming a parameter is that parameter's default; anything else is a literal.
        settings = {key: str(params[value].default) if value in params else str(value)
                    for key, value in literal.items()}
        # `rest` is the object the template builds from stagingDisabledFunctions: check that it
        # sets each AzureWebJobs.<name>.Disabled to this slot's flag.
        source = re.search(rf"var {rest} = json\('\{{\$\{{join\((\w+), ','\)\}}\}}'\)", text)
        assert source, f"{rest} is not built as expected"
        pattern = re.search(rf"var {source.group(1)} = \[for f in stagingDisabledFunctions: "
                            rf"'\"AzureWebJobs\.\$\{{f\}}\.Disabled\":\"{flag}\"'\]", text)
        assert pattern, f"{source.group(1)} does not set Disabled to {flag}"
        settings.update({f"AzureWebJobs.{name}.Disabled": flag for name in disabled})
        out[slot] = settings
    return out


def _host(env: dict[str, str]) -> App:
    host = DevHostProcess(ROOT, env=env)
    env["LOCAL_AGENT_API_BASE_URL"] = host.env["LOCAL_AGENT_API_BASE_URL"] = host.base_url
    app = App(host, env)
    host.start(timeout=120)
    return app


def _instances(app: App) -> list[dict]:
    response = requests.get(f"{app.base}/runtime/webhooks/durabletask/instances",
                            params={"code": DURABLE_KEY}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_staging_slot_runs_beside_production_then_swaps_after_the_gate(
        azurite: Azurite, tmp_path: Path) -> None:
    slots = slot_settings()
    assert slots["staging"]["POOL_BACKEND"] == "external"
    assert slots["staging"]["TASKHUB_NAME"] != slots["production"]["TASKHUB_NAME"]
    counts = tmp_path / "counts"
    counts.mkdir()
    # Shared (not sticky) settings: the same storage, containers, queue and tables.
    shared = app_env(azurite, tmp_path, E2E_SLOW_SECONDS="3", E2E_COUNT_DIR=str(counts),
                     DEVHOST_DURABLETASK_EXTENSION_KEY=DURABLE_KEY)
    suffix = shared["TASKHUB_NAME"].removeprefix("e2e")  # task hubs of this test only

    def slot_env(slot: str) -> dict[str, str]:
        env = {**shared, **slots[slot]}
        env["TASKHUB_NAME"] = f"{slots[slot]['TASKHUB_NAME']}{suffix}"
        if slot == "production":
            env["POOL_BACKEND"] = "local"  # the test's stand-in for the template's `azure`
        return env

    services = Services.from_env(shared)
    ensure_resources(services.settings, services.connection)
    started: list[App] = []
    try:
        production = _host(slot_env("production"))
        started.append(production)
        staging = _host(slot_env("staging"))
        started.append(staging)
        assert staging.get("/api/health").status_code == 200
        bodies = [b'{"slow": 1, "n": %d}' % i for i in range(6)]
        for i, body in enumerate(bodies[:4]):
            production.upload(f"before/{i}.json", body)
        production.wait_for("work under way", lambda: production.get(
            "/api/deployment/status").json()["hasRunning"], timeout=60)
        for i, body in enumerate(bodies[4:], start=4):  # dropped while both slots listen
            production.upload(f"before/{i}.json", body)

        gate = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "wait_for_drain.py"), "--url",
             production.base, "--key", FUNCTION_KEY, "--interval", "1", "--timeout", "300"],
            capture_output=True, text=True, timeout=360, check=False)
        assert gate.returncode == 0, gate.stdout + gate.stderr
        jobs = production.jobs()
        assert len(jobs) == 6 and all(j["status"] == "succeeded" for j in jobs), jobs
        assert all(_executions(counts, "process", body) == 1 for body in bodies)
        assert _instances(staging) == []  # staging's hub never saw the work
        assert len(_instances(production)) >= 6
        # One job table, shared: staging's API shows production's jobs.
        assert {j["jobId"] for j in staging.jobs()} == {j["jobId"] for j in jobs}

        # The swap: staging's code takes production's sticky settings; both old hosts go.
        staging.host.stop()
        production.host.stop()
        swapped = _host(slot_env("production"))
        started.append(swapped)
        after = b'{"slow": 1, "n": "after"}'
        swapped.upload("after.json", after)
        swapped.wait_for("the file dropped after the swap", lambda: [
            j for j in swapped.jobs() if j["blob"].endswith("/after.json")
            and j["status"] == "succeeded"], timeout=180)
        assert _executions(counts, "process", after) == 1
        assert len(_instances(swapped)) >= 7  # production's hub, continued
        assert all(_executions(counts, "process", body) == 1 for body in bodies)
    finally:
        for app in started:
            app.host.stop()
        backend = make_backend(services.settings, env=slot_env("production"))
        for vm in parse_pool_vms(services.settings.pool_vms):
            try:
                backend.deallocate(vm)
            except Exception:  # noqa: BLE001, S112 - best effort cleanup of agent processes
                continue
