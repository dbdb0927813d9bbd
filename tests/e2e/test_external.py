"""Kubernetes topology end to end: the app with `POOL_BACKEND=external` in devhost, and agent
"pods" that are not pool members, each started with exactly the environment the manifests in
`infra/k8s/` give a pod.

What Kubernetes itself provides is stood in for, and only that: the app's settings are the
`vmpool-settings` ConfigMap (its secrets filled in), each pod's environment is the ScaledJob
container's `envFrom` ConfigMap plus its `env` list (the pod name from `metadata.name`, secrets
from the Secrets), the in-cluster Service address resolves to devhost, the `/work` emptyDir is a
temporary folder, and the image's `cp` (the ConfigMap's action) is a counting copy. KEDA's part,
starting a pod while messages wait and fewer than three run, is a small loop here.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shlex
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from devhost.process import DevHostProcess
from shared.services import Services
from shared.storage import ensure_resources
from shared.workitem import sign
from tests.e2e.machines import kill_machine
from tools.azurite import Azurite
from tools.polling import poll

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
K8S = ROOT / "infra" / "k8s"
FUNCTION_KEY = "k8s-e2e-function-key"
PODS = 3
SLOW_SECONDS = 20


def _manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def pod_name() -> str:
    """A Job pod's name as KEDA and the Job controller make them: `<scaledjob>-xxxxx-yyyyy`."""
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    part = lambda: "".join(secrets.choice(alphabet) for _ in range(5))  # noqa: E731
    return f"vmpool-agent-{part()}-{part()}"


class Cluster:
    """What the manifests describe, resolved the way a cluster would resolve it."""

    def __init__(self, tmp: Path, azurite: Azurite, counts: Path) -> None:
        self.docs = _manifests()
        self.tmp = tmp
        self.secrets = {("vmpool-secrets", "AzureWebJobsStorage"): azurite.connection_string,
                        ("vmpool-secrets", "CALLBACK_SIGNING_KEY"): uuid.uuid4().hex,
                        ("vmpool-func-keys", "host.function.default"): FUNCTION_KEY}
        job = _one(self.docs, "ScaledJob", "vmpool-agent")
        self.pod_spec = job["spec"]["jobTargetRef"]["template"]["spec"]
        (self.container,) = self.pod_spec["containers"]
        self.image_bin = tmp / "image-bin"  # the image's tools: `cp` is the action
        self.image_bin.mkdir()
        shim = self.image_bin / "cp"
        shim.write_text(
            "#!/bin/sh\n"
            f"E2E_COUNT_DIR={shlex.quote(str(counts))} E2E_SLOW_SECONDS={SLOW_SECONDS} "
            f"exec {shlex.quote(sys.executable)} {shlex.quote(str(HERE / 'step_action.py'))} "
            'process "$1" "$2"\n')
        shim.chmod(0o755)

    def _value(self, item: dict[str, Any], pod: str) -> str:
        if "value" in item:
            return item["value"]
        ref = item["valueFrom"]
        if "fieldRef" in ref:
            assert ref["fieldRef"]["fieldPath"] == "metadata.name"
            return pod
        key = ref["secretKeyRef"]
        return self.secrets[(key["name"], key["key"])]

    def app_settings(self) -> dict[str, str]:
        deployment = _one(self.docs, "Deployment", "vmpool-api")
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            env.update(_one(self.docs, "ConfigMap", source["configMapRef"]["name"])["data"])
        for item in container.get("env", []):
            key = item.get("valueFrom", {}).get("secretKeyRef", {})
            if key.get("optional") and (key["name"], key["key"]) not in self.secrets:
                continue  # an optional secret this cluster does not have (telemetry)
            env[item["name"]] = self._value(item, "vmpool-api")
        return env

    def pod_env(self, pod: str, service_url: str) -> dict[str, str]:
        """The container's environment exactly; then the addresses the cluster would resolve."""
        env: dict[str, str] = {}
        for source in self.container.get("envFrom", []):
            env.update(_one(self.docs, "ConfigMap", source["configMapRef"]["name"])["data"])
        for item in self.container.get("env", []):
            env[item["name"]] = self._value(item, pod)
        service = urlsplit(env["AGENT_API_BASE_URL"])
        assert service.hostname.endswith(".svc.cluster.local")
        env["AGENT_API_BASE_URL"] = service_url + service.path  # cluster DNS -> devhost
        mounts = {m["mountPath"]: m["name"] for m in self.container["volumeMounts"]}
        assert env["AGENT_WORK_DIR"] in mounts  # an emptyDir of the pod
        env["AGENT_WORK_DIR"] = str(self.tmp / pod / mounts[env["AGENT_WORK_DIR"]])
        return env

    def command(self) -> list[str]:
        argv = [*self.container["command"], *self.container.get("args", [])]
        assert argv[:3] == ["python", "-m", "agent"], argv
        return [sys.executable, *argv[1:]]


class Pod:
    def __init__(self, name: str, process: subprocess.Popen, log: Path) -> None:
        self.name, self.process, self.log = name, process, log


@pytest.fixture()
def k8s(tmp_path: Path):
    azurite = Azurite.start(tmp_path / "azurite")  # own account: the manifests' default names
    counts = tmp_path / "counts"
    counts.mkdir()
    cluster = Cluster(tmp_path, azurite, counts)
    env = {**cluster.app_settings(),
           # the schedules of a test, not of a cluster: no sample drop every four hours
           "COLLECT_SCHEDULE": "0 0 0 1 1 *", "SCALER_SCHEDULE": "*/2 * * * * *",
           "DEVHOST_FUNCTION_KEY": FUNCTION_KEY, "DEVHOST_MASTER_KEY": "k8s-master",
           "DEVHOST_BLOB_POLL_SECONDS": "0.5", "PYTHONPATH": str(ROOT)}
    assert env["POOL_BACKEND"] == "external"
    services = Services.from_env(env)
    ensure_resources(services.settings, services.connection)
    host = DevHostProcess(ROOT, env=env)
    pods: list[Pod] = []
    lock = threading.Lock()

    def start_pod() -> Pod:
        name = pod_name()
        pod_env = cluster.pod_env(name, host.base_url)
        log = tmp_path / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                cluster.command(), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
                env={"PATH": f"{cluster.image_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                     "HOME": str(tmp_path), "PYTHONUNBUFFERED": "1", **pod_env})
        pod = Pod(name, process, log)
        with lock:
            pods.append(pod)
        return pod

    try:
        host.start(timeout=120)
        yield {"host": host, "services": services, "counts": counts, "pods": pods,
               "start_pod": start_pod, "lock": lock}
    finally:
        for pod in pods:
            if pod.process.poll() is None:
                kill_machine(pod.process.pid)
                pod.process.wait()
        host.stop()
        azurite.stop()


def _executions(counts: Path, body: bytes) -> int:
    digest = hashlib.sha1(body).hexdigest()[:16]
    return len(list(counts.glob(f"process-{digest}-*")))


def test_pods_outside_the_pool_finish_every_file_once(k8s) -> None:
    host, services, counts = k8s["host"], k8s["services"], k8s["counts"]
    s = services.settings
    import requests  # noqa: PLC0415

    http = requests.Session()
    http.headers["x-functions-key"] = FUNCTION_KEY

    def wait_for(what: str, check, timeout: float = 240.0):
        value = poll(check, timeout, 0.5)
        if value:
            return value
        logs = "\n".join(f"--- {p.name}\n{p.log.read_text()[-3000:]}" for p in k8s["pods"])
        raise AssertionError(f"timed out waiting for {what}\n{logs}\n--- host\n"
                             f"{host.output()[-4000:]}")

    # KEDA's part: start a pod while messages are visible and fewer than three pods run.
    stop = threading.Event()

    def keda() -> None:
        while not stop.wait(1.0):
            with k8s["lock"]:
                running = sum(p.process.poll() is None for p in k8s["pods"])
            visible = len(services.work_queue.peek_messages(max_messages=32))
            for _ in range(min(visible, PODS - running)):
                k8s["start_pod"]()

    for _ in range(PODS):
        k8s["start_pod"]()
    scaler = threading.Thread(target=keda, daemon=True)
    scaler.start()
    try:
        bodies = {f"k8s/f{i:02d}.json": json.dumps({"n": i}).encode() for i in range(19)}
        bodies["k8s/slow.json"] = b'{"slow": true}'
        for name, body in bodies.items():
            services.blobs.get_blob_client(s.data_container, name).upload_blob(body)

        def slow_claim():
            jobs = {j["jobId"]: j for j in http.get(f"{host.base_url}/api/jobs",
                                                    params={"limit": "100"}).json()["jobs"]}
            return [c for c in services.claims.active()
                    if jobs.get(c.job_id, {}).get("blob", "").endswith("slow.json")]

        (claim,) = wait_for("the slow file to be claimed", slow_claim, timeout=120)
        with k8s["lock"]:
            (victim,) = [p for p in k8s["pods"] if p.name == claim.vm]
        time.sleep(2)  # well inside the action's sleep: mid-file
        kill_machine(victim.process.pid)  # the pod and its action, at once
        victim.process.wait()

        # A forged callback from a non-member is refused, with or without the real token.
        item = services.issued.get(claim.job_id, 0, 1)[0]
        genuine = sign(item, services.settings.callback_signing_key)  # what the pod held
        forger = pod_name()
        url = f"{host.base_url}/api/vms/{forger}/jobs/{claim.job_id}/done"
        report = {"step": 0, "attempt": 1, "status": "succeeded", "bytesIn": 1, "bytesOut": 1,
                  "output": f"{s.results_container}/k8s/slow.json.process.out"}
        forged = http.post(url, json={**report, "token": "0" * 64}, timeout=30)
        assert forged.status_code == 403 and forged.json()["error"]["code"] == "InvalidToken"
        stolen = http.post(url, json={**report, "token": genuine}, timeout=30)
        assert stolen.status_code == 403 and stolen.json()["error"]["code"] == "NotClaimed"
        assert services.issued.get(claim.job_id, 0, 1)[1] is False  # nothing acknowledged

        def all_finished():
            jobs = http.get(f"{host.base_url}/api/jobs", params={"limit": "100"}).json()["jobs"]
            done = len(jobs) == 20 and all(j["status"] in ("succeeded", "failed") for j in jobs)
            return jobs if done else None

        jobs = wait_for("20 finished jobs", all_finished, timeout=300)
    finally:
        stop.set()
        scaler.join()

    assert sorted(j["status"] for j in jobs) == ["succeeded"] * 20
    for name, body in bodies.items():
        assert _executions(counts, body) == 1, name
    slow_job = next(j for j in jobs if j["blob"].endswith("slow.json"))
    assert slow_job["vm"] != victim.name and slow_job["vm"].startswith("vmpool-agent-")
    assert all(j["vm"].startswith("vmpool-agent-") for j in jobs)
    results = services.blobs.get_container_client(s.results_container)
    assert sorted(b.name for b in results.list_blobs()) == sorted(
        f"{n}.process.out" for n in bodies)

    # The pods show as ephemeral workers; pool members are untouched by them.
    pool = http.get(f"{host.base_url}/api/pool", timeout=30).json()
    workers = {w["name"]: w for w in pool["workers"]}
    assert {j["vm"] for j in jobs} <= set(workers)
    assert victim.name in workers and workers[victim.name]["lastHeartbeat"]
    assert not set(workers) & {vm["name"] for vm in pool["vms"]}
    assert all(vm["busy"] == 0 for vm in pool["vms"])

    # With nothing left, every surviving pod exits 0 by itself (AGENT_EXIT_WHEN_IDLE).
    for pod in k8s["pods"]:
        if pod is not victim:
            assert pod.process.wait(timeout=120) == 0, pod.log.read_text()[-3000:]
    pool = http.get(f"{host.base_url}/api/pool", timeout=30).json()
    workers = {w["name"]: w for w in pool["workers"]}
    for pod in k8s["pods"]:
        if pod is not victim:
            assert workers[pod.name]["state"] == "stopped", workers[pod.name]
    assert workers[victim.name]["state"] == "running"  # killed: it never said goodbye...
    assert workers[victim.name]["alive"] is False        # ...and its heartbeat went stale
