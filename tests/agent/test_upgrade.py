"""Agents upgrade themselves on Azurite: two agents (a pool VM and a pod-style worker) run
version N installed the way a VM has it (`AGENT_INSTALL_DIR/app` on PYTHONPATH); version N+1 is
published with `scripts/publish_agent.py` while they work. Every job is processed and reported
exactly once, and afterwards each agent reports N+1 from the same process (re-executed in
place, not restarted by anyone)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

from scripts.publish_agent import build_package, publish
from shared.pool.workers import WorkerRegistry

from .conftest import VM, wait_for

OLD, NEW = "9.0.0", "9.0.1+deploy2"
POD = "vmpool-agent-upg42-x7k2p"


def _install(package: bytes, install_dir: Path, version: str) -> None:
    """What cloud-init leaves on a VM: the unpacked version and the `app` link to it."""
    target = install_dir / "versions" / version
    target.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(package), mode="r:gz") as tar:
        tar.extractall(target, filter="data")
    (install_dir / "app").symlink_to(target)


def test_agents_move_to_the_published_version_without_losing_a_job(
        agent_env, api, work, registry, connection, settings, control, tmp_path) -> None:
    container = connection.blob_service().get_container_client(f"pkg-{uuid.uuid4().hex[:8]}")
    old_package, _ = build_package(version=OLD)
    publish(container, old_package, OLD)
    processes = []
    for name, use_pool in ((VM, "true"), (POD, "false")):
        install_dir = tmp_path / name
        _install(old_package, install_dir, OLD)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
        env.update(agent_env, AGENT_VM_NAME=name, AGENT_USE_POOL=use_pool,
                   AGENT_PACKAGE_CONTAINER=container.container_name,
                   AGENT_INSTALL_DIR=str(install_dir), AGENT_UPGRADE_CHECK_SECONDS="1",
                   AGENT_WORK_DIR=str(tmp_path / "work" / name),
                   PYTHONPATH=str(install_dir / "app"))
        log = (tmp_path / f"{name}.log").open("wb")
        # cwd holds no agent/: the code comes from the installed version only
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "agent"], cwd=tmp_path, env=env, stdout=log,
            stderr=subprocess.STDOUT))
    workers = WorkerRegistry(registry.table)

    def versions() -> dict[str, str]:
        pod = workers.get(POD)
        return {VM: registry.get(VM).agent_version, POD: pod.agent_version if pod else ""}

    def logs() -> str:
        return "\n".join((tmp_path / f"{n}.log").read_text()[-3000:] for n in (VM, POD))

    try:
        wait_for(lambda: versions() == {VM: OLD, POD: OLD}, timeout=60,
                 what="both agents up on version N")
        items = [work.submit(f"up/a{i:02d}.txt", f"first {i}".encode()) for i in range(10)]
        wait_for(lambda: len(api.done_calls()) >= 3, timeout=60, what="work under way")
        new_package, _ = build_package(version=NEW)
        publish(container, new_package, NEW)  # mid-run
        items += [work.submit(f"up/b{i:02d}.txt", f"second {i}".encode()) for i in range(10)]
        wait_for(lambda: len(api.done_calls()) >= 20 and work.messages_left() == 0,
                 timeout=120, what=f"every job reported\n{logs()}")
        wait_for(lambda: versions() == {VM: NEW, POD: NEW}, timeout=120,
                 what=f"both agents on version N+1\n{logs()}")
        late = work.submit("up/late.txt", b"after the upgrade")  # the new version works
        wait_for(lambda: any(c.path.endswith(f"/{late.job_id}/done")
                             for c in api.done_calls()), timeout=60, what="the late job")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)

    reported = [c.path.split("/jobs/")[1].split("/")[0] for c in api.done_calls()]
    assert sorted(reported) == sorted([i.job_id for i in items] + [late.job_id])  # once each
    assert all(c.body["status"] == "succeeded" for c in api.done_calls())
    runs = (control / "calls.log").read_text().splitlines()
    assert len(runs) == 21  # each action ran once
    assert sorted(work.result_names()) == sorted(
        [f"{i.blob_name}.process.out" for i in items] + [f"{late.blob_name}.process.out"])
    for name in (VM, POD):
        text = (tmp_path / f"{name}.log").read_text()
        assert f"agent {name} {OLD} up" in text and f"agent {name} {NEW} up" in text, text
        assert (tmp_path / name / "app").resolve().name == NEW
    assert all(p.returncode == 0 for p in processes)  # one process each, stopped cleanly
    assert json.loads(container.get_blob_client("release.json").download_blob().readall())[
        "version"] == NEW
