"""Every app setting the code reads is set by the templates, for the function app in Azure and
on Kubernetes; the pool VMs' agent gets only variables the agent reads."""
from __future__ import annotations

import re
from pathlib import Path

from agent.config import REQUIRED as AGENT_REQUIRED
from agent.config import variable_names as agent_variable_names
from scripts import bicep as br
from shared.settings import setting_names

# Host-level settings the templates set for the Functions host and SDKs (not read by our code).
HOST_SETTINGS = {
    "AzureWebJobsStorage__blobServiceUri", "AzureWebJobsStorage__queueServiceUri",
    "AzureWebJobsStorage__tableServiceUri", "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId", "AZURE_CLIENT_ID", "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY",
}


def _app_settings(infra: Path) -> set[str]:
    main = br.object_literal_keys(br.load(infra / "main.bicep"), "appSettings")
    host = br.object_literal_keys(br.load(infra / "app" / "api.bicep"), "hostSettings")
    own = br.object_literal_keys(br.load(infra / "app" / "api.bicep"), "selfSettings")
    return set(main) | set(host) | set(own)


def test_every_setting_the_code_reads_is_set_in_azure(infra: Path) -> None:
    names = set(setting_names())
    assert len(names) >= 34
    missing = names - _app_settings(infra)
    assert not missing, f"settings the app reads but main.bicep does not set: {sorted(missing)}"


def test_templates_set_no_unknown_app_setting(infra: Path) -> None:
    unknown = _app_settings(infra) - set(setting_names()) - HOST_SETTINGS
    assert not unknown, f"settings no code reads: {sorted(unknown)}"


def test_azure_values_that_matter(infra: Path) -> None:
    main = br.load(infra / "main.bicep")
    settings = br.object_literal(main, "appSettings")
    assert settings["POOL_BACKEND"] == "azure"
    assert settings["BLOB_TRIGGER_SOURCE"] == "EventGrid"
    assert settings["CALLBACK_SIGNING_KEY"] == (
        "@Microsoft.KeyVault(SecretUri=${keyVault.outputs.callbackSecretUri})")
    assert settings["AZURE_SUBSCRIPTION_ID"] == br.expression("subscription().subscriptionId")
    # Slot-sticky: each slot its own task hub; only production drives the pool.
    sticky = br.variable(main, "stickySettingNames")["function"]
    assert sticky["type"] == "concat"
    assert sticky["parameters"]["arg_1"] == ["TASKHUB_NAME", "POOL_BACKEND"]
    api = br.object_literal(br.load(infra / "app" / "api.bicep"), "hostSettings")
    assert api["AzureWebJobsStorage__credential"] == "managedidentity"
    storage = br.load(infra / "core" / "storage" / "storage-account.bicep")
    assert br.values_of(storage, "allowSharedKeyAccess") == [False]


def test_functions_disabled_in_staging_exist(infra: Path, root: Path) -> None:
    """The sticky AzureWebJobs.<name>.Disabled settings must name real functions."""
    names = br.parameters(br.load(infra / "main.bicep"))["stagingDisabledFunctions"].default
    defined = {m for p in (root / "blueprints").glob("*.py")
               for m in re.findall(r"^(?:async )?def (\w+)\(", p.read_text(), re.MULTILINE)}
    assert names and set(names) <= defined, f"not functions: {set(names) - defined}"


def test_vm_agent_environment_names_what_the_agent_reads(infra: Path) -> None:
    text = (infra / "app" / "vmpool.bicep").read_text()
    block = text[text.index("var agentEnv"):text.index("resource vms")]
    names = set(re.findall(r"^\s*'([A-Za-z_]+)=", block, re.MULTILINE))
    known = set(agent_variable_names()) | {"AZURE_CLIENT_ID", "VMPOOL_AGENT_PACKAGE_URL"}
    assert names, "no agent environment in vmpool.bicep"
    assert names <= known, f"the agent reads no {sorted(names - known)}"
    assert set(AGENT_REQUIRED) <= names, f"missing {set(AGENT_REQUIRED) - names}"
    # The agent adds /api/vms/... itself: it gets the app's root URL, the site's own host name
    # (api.bicep's `uri` output), for the VMs of vmpool.bicep and those pool.add creates.
    pool = br.load(infra / "main.bicep")["modules"]["pool"]["config"]["params"]
    assert pool["appBaseUrl"] == br.expression("api.outputs.uri")
    api = br.load(infra / "app" / "api.bicep")
    assert br.object_literal(api, "selfSettings")["POOL_AGENT_API_BASE_URL"] == (
        "https://${functionApp.properties.defaultHostName}")
