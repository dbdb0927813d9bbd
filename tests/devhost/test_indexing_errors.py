"""An app that fails to index keeps the host up, as the real host does; strict mode fails fast.

Upstream behaviour pinned here:
- azure-functions-python-worker `dispatcher.py` `_handle__functions_metadata_request`: an
  import error, a module without a FunctionApp or an inconsistent function fails the whole
  metadata answer; azure-functions-host `GrpcWorkerChannel.ProcessFunctionMetadataResponses`
  logs "Worker failed to index functions" and the host runs with no functions (404s).
- azure-functions-host `ScriptHost.FunctionErrors` / `FunctionsController.GetFunctionStatus`:
  a function the host cannot bind is left out, logged as "The 'X' function is in error", and
  `GET /admin/functions/{name}/status` answers `{"errors": [...]}`; the others run.
- azure-functions-host `WebJobsScriptHostService.UnsynchronizedStartHostAsync` and
  `HostController.GetHostStatus`: a start that throws sets state `Error` and `LastError`,
  which `GET /admin/host/status` reports as `errors`; `admin/host/ping` still answers 200.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import requests

from devhost.errors import ConfigError, DevHostError, IndexingError
from devhost.process import DevHostProcess, HostProcessError
from devhost.testing import ThreadedHost, running_host

MASTER = {"x-functions-key": "test-master-key"}


def status(base: str) -> dict[str, object]:
    answer = requests.get(f"{base}/admin/host/status", headers=MASTER, timeout=30)
    assert answer.status_code == 200
    return answer.json()


def write_no_app(root: Path) -> Path:
    root.mkdir()
    (root / "function_app.py").write_text("import azure.functions as func\nx = 1\n")
    (root / "host.json").write_text('{"version": "2.0"}')
    return root


def test_an_app_that_fails_at_import_runs_with_no_functions(
        apps: Path, host_env: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="devhost")
    with running_host(apps / "import_error_app", host_env, strict=False) as threaded:
        base = threaded.host.base_url
        assert requests.get(f"{base}/admin/host/ping", timeout=30).status_code == 200
        assert status(base) == {"id": threaded.host.host_id, "state": "Running",
                                "version": "devhost", "functions": []}
        assert requests.get(f"{base}/api/hello", timeout=30).status_code == 404
        assert requests.get(f"{base}/admin/functions", headers=MASTER,
                            timeout=30).json() == []
    text = caplog.text
    assert "Worker failed to index functions" in text
    assert "module_that_is_not_installed" in text
    assert "No job functions found." in text


def test_an_app_without_a_function_app_runs_with_no_functions(
        tmp_path: Path, host_env: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="devhost")
    with running_host(write_no_app(tmp_path / "app"), host_env, strict=False) as threaded:
        assert status(threaded.host.base_url)["state"] == "Running"
        assert threaded.host.loaded is not None and threaded.host.loaded.specs == []
    assert "defines no FunctionApp" in caplog.text


def test_functions_in_error_are_left_out_and_the_others_serve(
        apps: Path, host_env: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="devhost")
    with running_host(apps / "function_error_app", host_env, strict=False) as threaded:
        base = threaded.host.base_url
        assert requests.get(f"{base}/api/ok", timeout=30).text == "ok"
        assert requests.get(f"{base}/api/hub", timeout=30).status_code == 404
        assert status(base)["state"] == "Running"
        assert "errors" not in status(base)  # function errors are per function
        unresolved = requests.get(f"{base}/admin/functions/unresolved/status", headers=MASTER,
                                  timeout=30).json()
        assert "QUEUE_NOT_SET_ANYWHERE" in " ".join(unresolved["errors"])
        unsupported = requests.get(f"{base}/admin/functions/Unsupported/status",
                                   headers=MASTER, timeout=30).json()
        assert "eventHub" in " ".join(unsupported["errors"])
        bad_route = requests.get(f"{base}/admin/functions/bad_route/status", headers=MASTER,
                                 timeout=30).json()
        assert "nosuchconstraint" in " ".join(bad_route["errors"])
        assert requests.get(f"{base}/admin/functions/ok/status", headers=MASTER,
                            timeout=30).json() == {}
        assert requests.get(f"{base}/admin/functions/nothing/status", headers=MASTER,
                            timeout=30).status_code == 404
        assert [f["name"] for f in requests.get(f"{base}/admin/functions", headers=MASTER,
                                                timeout=30).json()] == ["ok"]
    assert "The 'unresolved' function is in error" in caplog.text
    assert "The 'unsupported' function is in error" in caplog.text


def test_a_durable_engine_that_cannot_start_puts_the_host_in_state_error(
        apps: Path, host_env: dict[str, str]) -> None:
    with running_host(apps / "durable_error_app", host_env, strict=False) as threaded:
        base = threaded.host.base_url
        assert requests.get(f"{base}/admin/host/ping", timeout=30).status_code == 200
        answer = status(base)
        assert answer["state"] == "Error"
        assert "DURABLE_STORAGE_NOT_SET" in " ".join(answer["errors"])  # type: ignore[arg-type]
        assert requests.post(f"{base}/api/start", timeout=30).status_code == 404
        assert requests.get(f"{base}/runtime/webhooks/durabletask/instances", headers=MASTER,
                            timeout=30).status_code == 404


@pytest.mark.parametrize(("app", "error", "match"), [
    ("import_error_app", IndexingError, "module_that_is_not_installed"),
    ("function_error_app", IndexingError, "QUEUE_NOT_SET_ANYWHERE"),
    ("durable_error_app", ConfigError, "DURABLE_STORAGE_NOT_SET"),
])
def test_strict_indexing_fails_the_start(apps: Path, host_env: dict[str, str], app: str,
                                         error: type[DevHostError], match: str) -> None:
    threaded = ThreadedHost(apps / app, host_env, strict=True)
    with pytest.raises(error, match=match):
        threaded.start()


def test_strict_indexing_from_the_setting(apps: Path, host_env: dict[str, str]) -> None:
    env = {**host_env, "DEVHOST_STRICT_INDEXING": "true"}
    threaded = ThreadedHost(apps / "import_error_app", env, strict=None)
    with pytest.raises(IndexingError, match="module_that_is_not_installed"):
        threaded.start()
    with running_host(apps / "import_error_app", {**host_env, "DEVHOST_STRICT_INDEXING": ""},
                      strict=None) as lenient:
        assert status(lenient.host.base_url)["state"] == "Running"


def test_the_cli_serves_a_broken_app_unless_strict(apps: Path, host_env: dict[str, str]) -> None:
    with DevHostProcess(apps / "import_error_app", env=host_env, strict=False) as host:
        assert status(host.base_url)["state"] == "Running"
        assert requests.get(f"{host.base_url}/api/hello", timeout=30).status_code == 404
    assert host.returncode == 0
    assert "Worker failed to index functions" in host.output()
    strict = DevHostProcess(apps / "import_error_app", env=host_env)  # strict by default
    try:  # the child's exit ends the wait for readiness ("exited", not "did not answer")
        with pytest.raises(HostProcessError, match="exited with 1") as failure:
            strict.start(timeout=120)
    finally:
        strict.close()
    assert "module_that_is_not_installed" in str(failure.value)
