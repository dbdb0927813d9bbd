"""`python -m devhost start` in a child process: function list with URLs, clean stop -> 0."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from devhost.process import PROJECT_ROOT, DevHostProcess


def test_cli_lists_functions_serves_and_stops_cleanly(apps: Path,
                                                      host_env: dict[str, str]) -> None:
    host = DevHostProcess(apps / "prefix_app", env=host_env)
    with host:
        assert requests.get(f"{host.base_url}/v1/ping", timeout=30).text == "pong"
    output = host.output()
    assert host.returncode == 0
    assert f"ping: [GET] {host.base_url}/v1/ping" in output
    assert f"settings: [GET] {host.base_url}/v1/settings/" in output
    assert "Host stopped." in output
    # Core Tools prints the message itself after a UTC timestamp, whoever logged it.
    stamp = r"^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\] "
    assert re.search(stamp + r"ping from the app$", output, re.M), output[-2000:]
    assert re.search(stamp + r"Executing 'Functions\.ping' \(Reason=", output, re.M)


def test_sigterm_lets_a_running_request_finish(apps: Path, host_env: dict[str, str],
                                               tmp_path: Path,
                                               eventually: Callable[..., Any]) -> None:
    marker = tmp_path / "slow-started"
    host = DevHostProcess(apps / "prefix_app", env={**host_env, "SLOW_MARKER": str(marker)})
    host.start()
    answers: list[requests.Response] = []
    caller = threading.Thread(target=lambda: answers.append(
        requests.get(f"{host.base_url}/v1/slow", timeout=60)))
    try:
        caller.start()
        eventually(marker.exists, what="slow function started")
        assert host.stop(sig=signal.SIGTERM) == 0
    finally:
        caller.join(60)
        host.close()
    assert [(a.status_code, a.text) for a in answers] == [(200, "done")]


def test_cli_reports_a_bad_script_root(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "devhost", "start", "--script-root", str(tmp_path / "nowhere"),
         "--port", "0"], check=False, cwd=PROJECT_ROOT, capture_output=True, text=True,
        timeout=60)
    assert result.returncode == 1
    assert "nowhere does not exist" in result.stderr
