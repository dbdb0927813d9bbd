"""`make run` notices a dead function host: it reports it, stops the agents and restarts it,
and gives up (with an error) on a host that keeps dying."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import requests
from rich.console import Console

from devhost.process import DevHostProcess
from tests.e2e.machines import kill_machine
from tools import run_local


def test_a_killed_host_is_reported_and_restarted(apps: Path, host_env: dict[str, str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    stopped: list[dict] = []
    monkeypatch.setattr(run_local, "stop_agents", stopped.append)  # no pool in this app
    out = io.StringIO()
    host = DevHostProcess(apps / "prefix_app", env=host_env)
    with host:
        watch = run_local.HostWatch(host, host_env, Console(file=out, width=200))
        watch.check()
        assert stopped == [] and out.getvalue() == ""  # alive: nothing to do
        for death in range(1, run_local.MAX_RESTARTS + 1):
            kill_machine(host.process.pid)
            host.process.wait(timeout=30)
            watch.check()
            assert len(stopped) == death  # its agents go with it
            assert requests.get(f"{host.base_url}/v1/ping", timeout=30).text == "pong"
        assert "The function host exited with code -9" in out.getvalue()
        kill_machine(host.process.pid)
        host.process.wait(timeout=30)
        with pytest.raises(run_local.HostDied, match="died 4 times"):
            watch.check()
