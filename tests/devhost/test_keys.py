"""Key enforcement on devhost, pinned to the real host's authorization code.

Upstream behaviour pinned (Azure/azure-functions-host, Azure/azure-functions-durable-extension):
- `src/WebJobs.Script.WebHost/Controllers/HostController.cs` `ExtensionWebHookHandler`: every
  `/runtime/webhooks/{extensionName}/{*extra}` route has policy `SystemKeyAuthLevel`;
- `Security/Authorization/Policies/AuthorizationOptionsExtensions.cs` (`SystemKeyAuthLevel`) and
  `AuthUtility.PrincipalHasAuthLevelClaim`: the system key named `{extension}_extension`
  (`DefaultScriptWebHookProvider.GetKeyName`) or an admin (master) key; a function key is not
  enough;
- durable-extension `HttpApiHandler.GetClientResponseLinks`: management URLs carry the system
  key as `code=`, so a caller can use them as given;
- durable-extension `LocalHttpListener.cs` + durable-python `DurableOrchestrationClient.py`
  (every call goes to `rpcBaseUrl`): the app's own client calls a loopback listener, never
  the keyed public routes;
- Core Tools `func start` checks no keys unless `--enableAuth`.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from devhost.process import DevHostProcess
from devhost.testing import running_host

MASTER, FUNCTION, DURABLE = "test-master-key", "test-function-key", "test-durable-system-key"
WH = "/runtime/webhooks/durabletask"


@pytest.fixture()
def keyed_host(apps: Path, host_env: dict[str, str], suffix: str) -> Iterator[DevHostProcess]:
    env = {**host_env, "HUB_NAME": f"keys{suffix}",
           "DEVHOST_DURABLETASK_EXTENSION_KEY": DURABLE}
    with DevHostProcess(apps / "durable_mgmt", env=env) as host:
        yield host


def every_route(running: str, done: str) -> list[tuple[str, str]]:
    """Each route of the durable HTTP API (`HttpApiHandler.HandleRequestAsync`)."""
    return [
        ("POST", f"{WH}/orchestrators/wait_for_go"),
        ("POST", f"{WH}/orchestrators/wait_for_go/new-one"),
        ("GET", f"{WH}/instances"),
        ("DELETE", f"{WH}/instances?createdTimeFrom=2000-01-01T00:00:00Z"),
        ("GET", f"{WH}/instances/{running}"),
        ("DELETE", f"{WH}/instances/{done}"),
        ("POST", f"{WH}/instances/{running}/raiseEvent/go"),
        ("POST", f"{WH}/instances/{running}/terminate?reason=x"),
        ("POST", f"{WH}/instances/{running}/suspend?reason=x"),
        ("POST", f"{WH}/instances/{running}/resume?reason=x"),
        ("POST", f"{WH}/instances/{done}/restart"),
        ("POST", f"{WH}/instances/{done}/rewind?reason=x"),
        ("GET", f"{WH}/entities/counter/k1"),
        ("POST", f"{WH}/entities/counter/k1?op=add"),
        ("GET", f"{WH}"),
        ("GET", f"{WH}/anything/else"),
    ]


def snapshot(base: str) -> tuple[list[tuple[Any, ...]], str]:
    """Every instance (id, status, last update, output) and the counter entity's state."""
    listed = requests.get(f"{base}{WH}/instances", params={"code": DURABLE, "showInput": "true"},
                          timeout=30)
    assert listed.status_code == 200, listed.text
    rows = sorted((i["instanceId"], i["runtimeStatus"], i["lastUpdatedTime"], str(i["output"]),
                   str(i["input"])) for i in listed.json())
    entity = requests.get(f"{base}{WH}/entities/counter/k1", params={"code": DURABLE},
                          timeout=30)
    return rows, f"{entity.status_code}:{entity.text}"


def wait_status(base: str, instance: str, wanted: str, eventually: Callable[..., Any]) -> None:
    def reached() -> bool:
        got = requests.get(f"{base}/api/state/{instance}", timeout=30)
        return got.status_code == 200 and got.json()["runtimeStatus"] == wanted

    eventually(reached, timeout=60, interval=0.2, what=f"{instance} {wanted}")


def test_every_management_route_needs_the_system_key(keyed_host: DevHostProcess,
                                                      eventually: Callable[..., Any]) -> None:
    base = keyed_host.base_url
    # Set up through the app only (its client binding): one instance waiting, one finished,
    # one entity with state.
    for instance in ("waiting", "finished"):
        started = requests.post(f"{base}/api/start/{instance}", json={"n": instance}, timeout=30)
        assert started.status_code == 202, keyed_host.output()[-3000:]
    requests.post(f"{base}/api/go/finished", timeout=30).raise_for_status()
    wait_status(base, "finished", "Completed", eventually)
    wait_status(base, "waiting", "Running", eventually)
    requests.post(f"{base}/api/count/k1", timeout=30).raise_for_status()
    eventually(lambda: snapshot(base)[1] == "200:1", what="counter at 1")
    before = snapshot(base)

    refused = []
    for method, path in every_route("waiting", "finished"):
        sep = "&" if "?" in path else "?"
        for how, kwargs in (
                ("no key", {}),
                ("function key as code", {"url": f"{base}{path}{sep}code={FUNCTION}"}),
                ("function key as header", {"headers": {"x-functions-key": FUNCTION}}),
                ("wrong key", {"url": f"{base}{path}{sep}code=not-a-key"})):
            url = kwargs.pop("url", f"{base}{path}")
            answer = requests.request(method, url, json={"x": 1} if method == "POST" else None,
                                      timeout=30, **kwargs)
            refused.append((method, path, how, answer.status_code))
    assert {r[3] for r in refused} == {401}, [r for r in refused if r[3] != 401]
    time.sleep(1.0)  # anything that had been accepted would have run by now
    assert snapshot(base) == before

    # The system key (as code= or header) and the master key open the same routes.
    status = requests.get(f"{base}{WH}/instances/waiting", timeout=30,
                          headers={"x-functions-key": DURABLE})
    assert status.status_code == 202 and status.json()["runtimeStatus"] == "Running"
    assert requests.get(f"{base}{WH}/instances/finished?code={MASTER}",
                        timeout=30).status_code == 200
    raised = requests.post(f"{base}{WH}/instances/waiting/raiseEvent/go?code={DURABLE}",
                           json="sent", timeout=30)
    assert raised.status_code == 202
    wait_status(base, "waiting", "Completed", eventually)
    signal = requests.post(f"{base}{WH}/entities/counter/k1?op=add&code={DURABLE}", json=2,
                           timeout=30)
    assert signal.status_code == 202
    eventually(lambda: snapshot(base)[1] == "200:3", what="counter at 3")
    started = requests.post(f"{base}{WH}/orchestrators/wait_for_go/by-key?code={DURABLE}",
                            json=None, timeout=30)
    assert started.status_code == 202, started.text
    terminated = requests.post(started.json()["terminatePostUri"].replace("{text}", "bye"),
                               timeout=30)
    assert terminated.status_code == 202
    wait_status(base, "by-key", "Terminated", eventually)


def test_check_status_links_carry_the_system_key(keyed_host: DevHostProcess,
                                                 eventually: Callable[..., Any]) -> None:
    base = keyed_host.base_url
    links = requests.post(f"{base}/api/start/linked", json={}, timeout=30).json()
    for name in ("statusQueryGetUri", "sendEventPostUri", "terminatePostUri",
                 "purgeHistoryDeleteUri", "restartPostUri", "suspendPostUri", "resumePostUri"):
        assert f"code={DURABLE}" in links[name], (name, links[name])
        assert links[name].startswith(f"{base}{WH}/instances/linked"), links[name]
    # usable exactly as given
    send = links["sendEventPostUri"].replace("{eventName}", "go")
    assert requests.post(send, json="x", timeout=30).status_code == 202
    wait_status(base, "linked", "Completed", eventually)
    assert requests.get(links["statusQueryGetUri"], timeout=30).status_code == 200


def test_default_checks_no_keys_like_func_start(apps: Path, host_env: dict[str, str]) -> None:
    env = {k: v for k, v in host_env.items() if k != "DEVHOST_ENABLE_AUTH"}
    with running_host(apps / "http_app", env=env) as threaded:
        base = threaded.host.base_url
        assert requests.get(f"{base}/api/items/7", timeout=30).status_code == 200
        assert requests.get(f"{base}/api/admin-only", timeout=30).status_code == 200
        assert requests.get(f"{base}/admin/host/status", timeout=30).status_code == 200


def test_enable_auth_flag_turns_enforcement_on(apps: Path, host_env: dict[str, str]) -> None:
    env = {k: v for k, v in host_env.items() if k != "DEVHOST_ENABLE_AUTH"}
    with DevHostProcess(apps / "http_app", env=env, enable_auth=True) as host:
        assert requests.get(f"{host.base_url}/api/items/7", timeout=30).status_code == 401
        assert requests.get(f"{host.base_url}/api/items/7?code={FUNCTION}",
                            timeout=30).status_code == 200
