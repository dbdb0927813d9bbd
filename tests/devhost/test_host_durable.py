"""A durable app through the devhost server: HTTP starter -> orchestrator -> activity."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from devhost.process import DevHostProcess


def test_http_starter_runs_orchestration_to_completion(apps: Path, host_env: dict[str, str],
                                                       suffix: str,
                                                       eventually: Callable[..., Any]) -> None:
    env = {**host_env, "HUB_NAME": f"hub{suffix}"}
    with DevHostProcess(apps / "orchestration_app", env=env) as host:
        started = requests.post(f"{host.base_url}/api/start/ada", timeout=30)
        assert started.status_code == 202, host.output()[-3000:]
        links = started.json()
        assert links["statusQueryGetUri"].startswith(host.base_url)

        def finished() -> dict[str, Any] | None:
            status = requests.get(links["statusQueryGetUri"], timeout=30).json()
            return status if status.get("runtimeStatus") in ("Completed", "Failed") else None

        status = eventually(finished, timeout=60, interval=0.2, what="orchestration end")
    assert status["runtimeStatus"] == "Completed", status
    assert status["output"] == ["Hello ada", "Hello ADA"]
    assert host.returncode == 0
