"""Index `function_app.py` with the real Azure Functions Python worker (azure-functions-runtime).

The worker needs Python >= 3.13; a virtualenv with it, the runtime and the app's requirements is
built once in `.venv-worker/` and reused while the requirements are unchanged.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shared import contracts

ROOT = Path(__file__).resolve().parent.parent
WORKER_VENV = ROOT / ".venv-worker"
WORKER_RUNTIME = "azure-functions-runtime==1.3.0"

# Every function the app must expose; indexing must report each of them. The orchestrators and
# activities are named by the contracts, the one place their names are written.
EXPECTED_FUNCTIONS = {
    "health_http", "dashboard_http", "dashboard_asset_http", "collect_data_timer",
    "data_blob_trigger", *contracts.ORCHESTRATORS,
    *contracts.ACTIVITIES, "pool_scaler_timer", "pool_status_http", "submit_change_http",
    "get_change_http", "submit_job_http", "get_job_http", "list_jobs_http", "start_run_http",
    "get_run_http", "vm_done_http", "vm_idle_http", "deployment_status_http", "openapi_http",
}


def _find_python313() -> str | None:
    candidates = [os.environ.get("PYTHON313", ""), shutil.which("python3.13") or ""]
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates += sorted(glob.glob(f"{pyenv_root}/versions/3.1[3-9]*/bin/python3"), reverse=True)
    for candidate in candidates:
        if not candidate:
            continue
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info >= (3, 13))"],
                               capture_output=True, text=True, check=False)
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            return candidate
    return None


def _worker_python() -> Path:
    python313 = _find_python313()
    if python313 is None:
        if os.environ.get("CI"):
            pytest.fail("Python 3.13 is required in CI for the worker indexing test")
        pytest.skip("no Python >= 3.13 found for azure-functions-runtime")
    stamp_text = WORKER_RUNTIME + (ROOT / "requirements.txt").read_text() + python313
    stamp = hashlib.sha256(stamp_text.encode()).hexdigest()
    python = WORKER_VENV / "bin" / "python"
    stamp_file = WORKER_VENV / ".stamp"
    if not python.exists() or not stamp_file.exists() or stamp_file.read_text() != stamp:
        shutil.rmtree(WORKER_VENV, ignore_errors=True)
        subprocess.run([python313, "-m", "venv", str(WORKER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", WORKER_RUNTIME,
                        "-r", str(ROOT / "requirements.txt")], check=True)
        stamp_file.write_text(stamp)
    return python


def _index(script_root: Path, python: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    local = json.loads((ROOT / "local.settings.json").read_text())["Values"]
    env.update(local)
    proc = subprocess.run([str(python), str(ROOT / "tools" / "index_functions.py"),
                           str(script_root)], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
    assert proc.stdout.strip(), f"indexer printed nothing; stderr: {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def worker_python() -> Path:
    return _worker_python()


def test_function_app_indexes_with_the_real_worker(worker_python: Path) -> None:
    result = _index(ROOT, worker_python)
    assert result["ok"], result["error"]
    names = {fn["name"] for fn in result["functions"]}
    assert EXPECTED_FUNCTIONS - names == set(), f"missing functions: {EXPECTED_FUNCTIONS - names}"
    health = next(fn for fn in result["functions"] if fn["name"] == "health_http")
    trigger = next(b for b in health["bindings"] if b["type"] == "httpTrigger")
    assert trigger["route"] == "health" and trigger["authLevel"] == "ANONYMOUS"
    assert trigger["methods"] == ["GET"]


def test_worker_reports_a_broken_app(worker_python: Path, tmp_path: Path) -> None:
    """The check must be able to fail: a parameter that matches no binding is an indexing error."""
    (tmp_path / "function_app.py").write_text(
        "import azure.functions as func\n"
        "app = func.FunctionApp()\n"
        "@app.route(route='x')\n"
        "def broken_http(request: func.HttpRequest) -> func.HttpResponse:\n"
        "    return func.HttpResponse('x')\n")
    result = _index(tmp_path, worker_python)
    assert not result["ok"]
    assert "broken_http" in result["error"] and "request" in result["error"]


if __name__ == "__main__":  # pragma: no cover - manual use
    sys.exit(pytest.main([__file__]))
