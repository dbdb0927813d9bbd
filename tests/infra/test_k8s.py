"""Kubernetes manifests, the function app's Dockerfile and azure.yaml: they parse, reference each
other consistently, and name only settings and variables that exist."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import REQUIRED as AGENT_REQUIRED
from agent.config import variable_names as agent_variable_names
from shared.settings import setting_names

# Variables the manifests give the Functions host rather than our code, each for a reason.
HOST_VARIABLES = {
    "AzureWebJobsStorage",  # the host's storage connection (our STORAGE_CONNECTION names it)
    "AzureWebJobsSecretStorageType",  # function keys kept in a Kubernetes Secret
    "AzureWebJobsKubernetesSecretName",  # which Secret holds them
    "FUNCTIONS_WORKER_RUNTIME",  # the language worker the host starts
    "APPLICATIONINSIGHTS_CONNECTION_STRING",  # telemetry destination for the host and worker
}


def _docs(k8s: Path) -> list[dict[str, Any]]:
    docs = []
    for path in sorted(k8s.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


@pytest.fixture(scope="module")
def manifests(infra: Path) -> list[dict[str, Any]]:
    docs = _docs(infra / "k8s")
    assert len(docs) >= 10
    return docs


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _container_env(container: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Variable name -> value or reference, including every key of envFrom ConfigMaps."""
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        config = _one(docs, "ConfigMap", source["configMapRef"]["name"])
        env.update(config["data"])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", item.get("valueFrom"))
    return env


def test_every_manifest_is_namespaced_and_named(manifests: list[dict[str, Any]]) -> None:
    for doc in manifests:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "vmpool", doc["metadata"]


def test_function_app_env_is_exactly_the_app_settings(manifests: list[dict[str, Any]]) -> None:
    deployment = _one(manifests, "Deployment", "vmpool-api")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = _container_env(container, manifests)
    unknown = set(env) - set(setting_names()) - HOST_VARIABLES
    assert not unknown, f"variables neither the app nor the host reads: {sorted(unknown)}"
    missing = set(setting_names()) - set(env)
    assert not missing, f"settings the app reads that the manifests leave unset: {sorted(missing)}"
    assert env["POOL_BACKEND"] == "external"
    assert env["BLOB_TRIGGER_SOURCE"] == "LogsAndContainerScan"
    assert env["CALLBACK_SIGNING_KEY"]["secretKeyRef"]["name"] == "vmpool-secrets"
    assert all(isinstance(v, str) for v in
               _one(manifests, "ConfigMap", "vmpool-settings")["data"].values())


def test_agent_job_env_names_only_agent_variables(manifests: list[dict[str, Any]]) -> None:
    job = _one(manifests, "ScaledJob", "vmpool-agent")
    (container,) = job["spec"]["jobTargetRef"]["template"]["spec"]["containers"]
    env = _container_env(container, manifests)
    unknown = set(env) - set(agent_variable_names())
    assert not unknown, f"the agent reads no {sorted(unknown)}"
    assert set(AGENT_REQUIRED) <= set(env)
    assert env["AGENT_VM_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # The agent adds /api/vms/... itself: the base URL is the Service's root.
    assert env["AGENT_API_BASE_URL"].rstrip("/").endswith(".svc.cluster.local")
    # A pod is no pool member, and its Job ends when the work does.
    assert env["AGENT_USE_POOL"] == "false" and env["AGENT_EXIT_WHEN_IDLE"] == "true"
    assert float(env["AGENT_IDLE_SECONDS"]) > 0
    # A killed pod's claim is stale for the next pod exactly when the app thinks so too.
    app = _one(manifests, "ConfigMap", "vmpool-settings")["data"]
    assert env["AGENT_CLAIM_STALE_SECONDS"] == app["HEARTBEAT_TIMEOUT_SECONDS"]
    assert env["AGENT_RESULTS_CONTAINER"] == app["RESULTS_CONTAINER"]
    assert env["AGENT_CLAIM_TABLE"] == app["CLAIM_TABLE"]
    assert env["AGENT_VM_TABLE"] == app["VM_TABLE"]
    argv = container["command"] + container.get("args", [])
    assert argv == ["python", "-m", "agent"]  # no wrapper that stops a pod mid-job
    assert "activeDeadlineSeconds" not in job["spec"]["jobTargetRef"]


def test_scalers_point_at_real_queues_and_targets(manifests: list[dict[str, Any]]) -> None:
    settings = _one(manifests, "ConfigMap", "vmpool-settings")["data"]
    auth_names = {d["metadata"]["name"] for d in manifests if d["kind"] == "TriggerAuthentication"}
    job = _one(manifests, "ScaledJob", "vmpool-agent")
    (trigger,) = job["spec"]["triggers"]
    assert trigger["type"] == "azure-queue"
    assert trigger["metadata"]["queueName"] == settings["WORK_QUEUE"]
    assert trigger["authenticationRef"]["name"] in auth_names
    agent_env = _container_env(
        job["spec"]["jobTargetRef"]["template"]["spec"]["containers"][0], manifests)
    assert agent_env["AGENT_WORK_QUEUE"] == settings["WORK_QUEUE"]

    scaled = _one(manifests, "ScaledObject", "vmpool-api")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "vmpool-api"
    assert scaled["spec"]["minReplicaCount"] >= 1  # timers and HTTP need a running host
    hub = settings["TASKHUB_NAME"].lower()
    queues = {t["metadata"]["queueName"] for t in scaled["spec"]["triggers"]
              if t["type"] == "azure-queue"}
    assert queues and all(q.startswith(f"{hub}-") for q in queues), queues
    assert f"{hub}-workitems" in queues
    for trig in scaled["spec"]["triggers"]:
        if trig["type"] == "azure-queue":
            assert trig["authenticationRef"]["name"] in auth_names
    service = _one(manifests, "Service", "vmpool-api")
    assert service["spec"]["selector"] == \
        _one(manifests, "Deployment", "vmpool-api")["spec"]["selector"]["matchLabels"]


def test_secrets_used_are_documented(manifests: list[dict[str, Any]], root: Path) -> None:
    text = yaml.safe_dump(manifests)
    refs = set(re.findall(r"secretKeyRef:\n\s+key: (\S+)\n\s+name: (\S+)", text))
    assert refs, "no secret references"
    doc = (root / "docs" / "deployment.md").read_text()
    for key, name in refs:
        assert name in doc and key in doc, f"docs/deployment.md does not explain {name}/{key}"


def test_function_app_dockerfile(infra: Path) -> None:
    text = (infra / "k8s" / "Dockerfile").read_text()
    assert re.search(r"^FROM mcr\.microsoft\.com/azure-functions/python:4-python3\.11$", text,
                     re.MULTILINE)
    copied = " ".join(re.findall(r"^COPY (.+)$", text, re.MULTILINE))
    for needed in ("function_app.py", "host.json", "requirements.txt", "openapi.json",
                   "blueprints/", "shared/"):
        assert needed in copied, needed
    assert re.search(r"^USER \d+", text, re.MULTILINE)


def test_azure_yaml(root: Path) -> None:
    """What azd deploys (its hooks: tests/infra/test_azd_hooks.py)."""
    body = yaml.safe_load((root / "azure.yaml").read_text())
    assert body["services"]["api"] == {"project": ".", "language": "python", "host": "function"}
    assert body["infra"]["path"] == "infra"
