"""Functions disabled by app setting, as the WebJobs SDK reads it (`FunctionIndexer.IsDisabled`:
`AzureWebJobs.<name>.Disabled`, or `AzureWebJobs_<name>_Disabled` where dots are not allowed,
through `IsSettingEnabled`: `true` or `1`; .NET configuration keys are case-insensitive). A
disabled function's listener never starts; the admin API still runs it; on Azure a disabled
HTTP function is not reachable (docs: "How to disable functions in Azure Functions")."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from azure.storage.blob import BlobServiceClient

from devhost.config import disabled_functions
from devhost.testing import running_host

MASTER = "test-master-key"


def test_setting_forms_that_disable_a_function() -> None:
    names = ["a", "b", "c", "d", "e", "f"]
    settings = {"AzureWebJobs.a.Disabled": "true", "AZUREWEBJOBS.B.DISABLED": "True",
                "AzureWebJobs_c_Disabled": "1", "AzureWebJobs.d.Disabled": "false",
                "AzureWebJobs.e.Disabled": "yes", "AzureWebJobs.x.Disabled": "true"}
    assert disabled_functions(names, settings) == {"a", "b", "c"}


def test_disabled_functions_never_fire_while_their_twins_do(
        apps: Path, host_env: dict[str, str], suffix: str,
        eventually: Callable[..., Any]) -> None:
    out_name = f"dis-{suffix}"
    env = {**host_env, "OUT_CONTAINER": out_name,
           "AzureWebJobs.tick_off.Disabled": "true",
           "azurewebjobs_DROP_OFF_disabled": "1",
           "AzureWebJobs.web_off.Disabled": "True",
           "AzureWebJobs.web_on.Disabled": "false"}
    service = BlobServiceClient.from_connection_string(env["AzureWebJobsStorage"])
    out = service.create_container(out_name)
    service.create_container(f"{out_name}-in").upload_blob("a.txt", b"payload")

    def count(prefix: str) -> int:
        return sum(1 for _ in out.list_blobs(name_starts_with=prefix))

    with running_host(apps / "disabled_app", env) as th:
        base = th.host.base_url
        eventually(lambda: count("tick_on/") >= 3 and count("drop_on/") == 1,
                   what="the enabled timer and blob trigger")
        assert count("tick_off/") == 0 and count("drop_off/") == 0
        assert requests.get(f"{base}/api/web_on", timeout=10).text == "web_on"
        assert requests.get(f"{base}/api/web_off", timeout=10).status_code == 404
        listing = requests.get(f"{base}/admin/functions", timeout=10,
                               headers={"x-functions-key": MASTER}).json()
        assert {f["name"]: f["isDisabled"] for f in listing} == {
            "tick_on": False, "tick_off": True, "drop_on": False, "drop_off": True,
            "web_on": False, "web_off": True}
        # The admin API still runs a disabled function.
        invoked = requests.post(f"{base}/admin/functions/tick_off", json={"input": ""},
                                headers={"x-functions-key": MASTER}, timeout=10)
        assert invoked.status_code == 202
        eventually(lambda: count("tick_off/") == 1, what="the admin invoke")
        assert count("drop_off/") == 0
