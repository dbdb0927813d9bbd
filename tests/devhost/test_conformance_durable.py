"""Durable conformance through a devhost process: name resolution and the status shape.

Upstream behaviour pinned (Azure/azure-functions-durable-extension):
- `src/WebJobs.Extensions.DurableTask/FunctionName.cs`: orchestrator, activity and entity
  names compare `OrdinalIgnoreCase`, so `call_activity("Hello")` reaches `hello` and starting
  `My_Orchestrator` runs `my_orchestrator`; the names recorded are the ones the caller used;
- `ContextImplementations/DurableClient.cs` `GetDurableOrchestrationStatusAsync`: the
  `showHistory` shape (see the test's docstring);
- `HttpApiHandler.cs` `ConvertFrom`: `createdTime`/`lastUpdatedTime` as `yyyy-MM-ddTHH:mm:ssZ`;
  `HandleGetStatusRequestAsync`: 202 with `Retry-After: 5` while running, 200 when done.
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from devhost.process import DevHostProcess

SECONDS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
HISTORY_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,7})?Z$")


def test_names_differing_in_case_run_and_history_has_the_host_shape(
        apps: Path, host_env: dict[str, str], suffix: str,
        eventually: Callable[..., Any]) -> None:
    """Field by field, as `GetDurableOrchestrationStatusAsync` leaves the history: each
    TaskScheduled / SubOrchestrationInstanceCreated is folded into its completion (which gains
    `FunctionName`, `ScheduledTime`, `Input`, and loses `TaskScheduledId`), `ExecutionStarted`
    has `FunctionName` instead of `Name`, `EventId`/`IsPlayed` are gone, TimerFired has no
    `TimerId`, OrchestratorStarted/Completed markers are gone, `Result` is shown (parsed) only
    with `showHistoryOutput=true`."""
    env = {**host_env, "HUB_NAME": f"names{suffix}"}
    with DevHostProcess(apps / "durable_names", env=env) as host:
        started = requests.post(f"{host.base_url}/api/start", timeout=30)
        assert started.status_code == 202, host.output()[-3000:]
        status_url = started.json()["statusQueryGetUri"]
        first = requests.get(status_url, timeout=30)
        if first.status_code == 202:
            assert first.headers["Retry-After"] == "5"

        def done() -> requests.Response | None:
            answer = requests.get(f"{status_url}&showHistory=true&showHistoryOutput=true",
                                  timeout=30)
            return answer if answer.status_code == 200 else None

        status = eventually(done, timeout=60, interval=0.2, what="orchestration end").json()
        legacy = requests.get(f"{host.base_url}/api/legacy-client", timeout=30)
        assert (legacy.status_code, legacy.text.lower()) == (200, f"names{suffix}")
        without_output = requests.get(f"{status_url}&showHistory=true", timeout=30).json()
        without_input = requests.get(f"{status_url}&showHistory=true&showInput=false",
                                     timeout=30).json()
    assert status["runtimeStatus"] == "Completed", status
    assert status["name"] == "My_Orchestrator"
    assert status["output"] == {"greeting": "hello ada", "child": "HELLO ADA", "total": 2}
    assert SECONDS.match(status["createdTime"]) and SECONDS.match(status["lastUpdatedTime"])

    events = status["historyEvents"]
    assert [e["EventType"] for e in events] == [
        "ExecutionStarted", "TaskCompleted", "SubOrchestrationInstanceCompleted",
        "TimerCreated", "TimerFired", "EventSent", "EventRaised", "ExecutionCompleted"]
    keys = [set(e) for e in events]
    assert keys[0] == {"EventType", "Timestamp", "FunctionName", "Input"}
    assert keys[1] == keys[2] == {"EventType", "Timestamp", "Result", "ScheduledTime",
                                  "FunctionName", "Input"}
    assert keys[3] == keys[4] == {"EventType", "Timestamp", "FireAt"}
    assert keys[5] == {"EventType", "Timestamp", "Name", "InstanceId", "Input"}
    assert keys[6] == {"EventType", "Timestamp", "Name", "Input"}
    assert keys[7] == {"EventType", "Timestamp", "Result", "OrchestrationStatus"}
    started_ev, activity, child, _, _, sent, _, completed = events
    assert started_ev["FunctionName"] == "My_Orchestrator" and started_ev["Input"] == '"ada"'
    assert (activity["FunctionName"], activity["Input"], activity["Result"]) == (
        "Hello", '"ada"', "hello ada")
    assert (child["FunctionName"], child["Result"]) == ("Child_Flow", "HELLO ADA")
    assert sent["InstanceId"] == "@tally@k"  # entity names are lower-cased (EntityId)
    assert completed["OrchestrationStatus"] == "Completed"
    assert completed["Result"] == status["output"]
    for event in events:
        for key in ("Timestamp", "ScheduledTime", "FireAt"):
            if key in event:
                assert HISTORY_TIME.match(event[key]), (key, event[key])
    assert not any("Result" in e for e in without_output["historyEvents"])
    assert not any("Input" in e for e in without_input["historyEvents"])
    assert without_input["input"] is None


def test_unknown_orchestrator_is_refused_whatever_the_case(apps: Path, host_env: dict[str, str],
                                                          suffix: str) -> None:
    """HttpApiHandler.HandleStartOrchestratorRequestAsync -> ArgumentException -> 400; a name
    that only differs in case is not unknown."""
    env = {**host_env, "HUB_NAME": f"names{suffix}"}
    key = {"code": host_env["DEVHOST_MASTER_KEY"]}
    with DevHostProcess(apps / "durable_names", env=env) as host:
        base = f"{host.base_url}/runtime/webhooks/durabletask/orchestrators"
        assert requests.post(f"{base}/no_such_flow", params=key, json="x",
                             timeout=30).status_code == 400
        ok = requests.post(f"{base}/CHILD_FLOW", params=key, json="x", timeout=30)
        assert ok.status_code == 202
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            answer = requests.get(ok.json()["statusQueryGetUri"], timeout=30)
            if answer.status_code == 200:
                break
            time.sleep(0.2)
        assert answer.json()["output"] == "X"
