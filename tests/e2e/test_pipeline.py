"""The pipeline end to end through devhost, on Azurite, with a local pool of agent processes."""
import hashlib
import json
import time
from pathlib import Path

import requests

from shared.pool.registry import VmState
from tests.e2e.machines import kill_machine as _kill_machine


def _executions(count_dir: Path, action: str, body: bytes) -> int:
    digest = hashlib.sha1(body).hexdigest()[:16]
    return len(list(count_dir.glob(f"{action}-{digest}-*")))


def _started_vms(app) -> set[str]:
    events = app.services.log.day(kind="pool.scaled", limit=10_000)
    return {vm for e in events for vm in e["data"].get("start", [])}


def _all_deallocated(app) -> bool:
    return all(vm["state"] == "deallocated" for vm in app.pool()["vms"])


def test_twenty_files_each_processed_once_then_pool_stops(start_app, tmp_path) -> None:
    counts = tmp_path / "counts"
    counts.mkdir()
    app = start_app(E2E_COUNT_DIR=str(counts))
    s = app.services.settings
    bodies = {f"batch/f{i:02d}.json": json.dumps({"n": i}).encode() for i in range(20)}
    for name, body in bodies.items():
        app.upload(name, body)
    def all_finished() -> list[dict] | None:
        js = app.jobs()
        done = len(js) == 20 and all(j["status"] in ("succeeded", "failed") for j in js)
        return js if done else None

    jobs = app.wait_for("20 finished jobs", all_finished, timeout=240)
    assert sorted(j["status"] for j in jobs) == ["succeeded"] * 20
    for name, body in bodies.items():
        assert _executions(counts, "process", body) == 1, name
    assert app.blob_names(s.results_container) == sorted(
        f"{n}.process.out" for n in bodies)
    assert app.blob_names(s.archive_container) == sorted(bodies)
    for name, body in bodies.items():  # originals are moved intact
        archived = app.services.blobs.get_blob_client(s.archive_container, name)
        assert archived.download_blob().readall() == body, name
    assert app.blob_names(s.data_container) == []
    for job in jobs:
        assert job["bytesIn"] == len(bodies[job["blob"].split("/", 1)[1]])
        assert job["bytesOut"] == job["bytesIn"] + len(b"process:")
    assert _started_vms(app) <= {"vm01", "vm02", "vm03"}
    app.wait_for("every VM deallocated after the cooldown", lambda: _all_deallocated(app),
                 timeout=90)
    assert app.services.claims.active() == []


def test_one_file_starts_one_vm(start_app) -> None:
    # a generous boot timeout: under load a slow boot must not count as a VM that never came up
    app = start_app(BOOT_TIMEOUT_SECONDS="120")
    app.upload("single.json", b'{"one": 1}')
    app.wait_for("the job", lambda: [j for j in app.jobs() if j["status"] == "succeeded"])
    app.wait_for("the VM deallocated", lambda: _all_deallocated(app), timeout=60)
    scaled = [(e["at"], e["message"]) for e in app.services.log.day(kind="pool.scaled")]
    assert len(_started_vms(app)) == 1, scaled


def test_run_summary_adds_up(start_app) -> None:
    app = start_app()
    bodies = {f"run/r{i}.json": (b"x" * (10 + i)) for i in range(6)}
    for name, body in bodies.items():  # owned by a run: the blob trigger leaves them alone
        app.upload(name, body, metadata={"run_id": "summary-run"})
    response = app.post("/api/runs", json={"prefix": "run/", "runId": "summary-run"})
    assert response.status_code == 202, response.text
    def summarised() -> dict | None:
        run = app.get("/api/runs/summary-run").json()
        done = (run.get("orchestration") or {}).get("runtimeStatus") == "Completed"
        return run if done and run.get("summary") else None

    run = app.wait_for("the run to complete", summarised, timeout=180)
    summary = run["summary"]
    assert (summary["files"], summary["succeeded"], summary["failed"]) == (6, 6, 0)
    assert summary["bytesIn"] == sum(len(b) for b in bodies.values())
    assert summary["bytesOut"] == summary["bytesIn"] + 6 * len(b"process:")
    assert run["orchestration"]["runtimeStatus"] == "Completed"
    assert len(app.jobs(runId="summary-run")) == 6
    again = app.post("/api/runs", json={"prefix": "run/", "runId": "summary-run"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "Conflict"


def test_agent_killed_mid_file_still_completes_once(start_app, tmp_path) -> None:
    counts = tmp_path / "counts"
    counts.mkdir()
    app = start_app(E2E_COUNT_DIR=str(counts), E2E_SLOW_SECONDS="8", POOL_MAX_RUNNING="2")
    body = b'{"slow": true}'
    app.upload("slow.json", body)
    claim = app.wait_for("a claim", app.services.claims.active, timeout=60)[0]
    pid_file = Path(app.env["LOCAL_STATE_DIR"]) / f"{claim.vm}.json"
    _kill_machine(json.loads(pid_file.read_text())["pid"])
    jobs = app.wait_for("the job to finish", lambda: [
        j for j in app.jobs() if j["status"] in ("succeeded", "failed")], timeout=180)
    assert [j["status"] for j in jobs] == ["succeeded"]
    assert _executions(counts, "process", body) == 1
    assert app.blob_names(app.services.settings.results_container) == ["slow.json.process.out"]


def test_vm_that_never_comes_up_is_replaced(start_app) -> None:
    app = start_app(E2E_DEAD_VM="vm01", POOL_MAX_RUNNING="1", BOOT_TIMEOUT_SECONDS="10")
    app.upload("needs-a-vm.json", b"{}")
    jobs = app.wait_for("the job to succeed", lambda: [
        j for j in app.jobs() if j["status"] == "succeeded"], timeout=180)
    assert jobs[0]["vm"] != "vm01"
    assert app.services.registry.get("vm01").state == VmState.FAILED


def test_same_blob_twice_is_one_job_and_an_overwrite_is_another(start_app) -> None:
    app = start_app(E2E_SLOW_SECONDS="3")
    s = app.services.settings
    app.upload("twice.json", b'{"slow": 1}')
    for _ in range(2):  # the trigger fires again for the same blob and ETag
        response = app.http.post(f"{app.base}/admin/functions/data_blob_trigger",
                                 json={"input": f"{s.data_container}/twice.json"},
                                 headers={"x-functions-key": "e2e-master-key"}, timeout=10)
        assert response.status_code == 202, response.text
    app.wait_for("the first job", lambda: [j for j in app.jobs() if j["status"] == "succeeded"])
    time.sleep(2)
    assert len(app.jobs()) == 1
    app.upload("twice.json", b'{"v": 2}')
    app.wait_for("a second job", lambda: len(
        [j for j in app.jobs() if j["status"] == "succeeded"]) == 2)


def test_two_step_pipeline_chains_on_the_pool(start_app) -> None:
    app = start_app(PIPELINE_ACTIONS="extract,transform")
    app.upload("chain.json", b"raw")
    jobs = app.wait_for("the job", lambda: [
        j for j in app.jobs() if j["status"] in ("succeeded", "failed")], timeout=120)
    assert jobs[0]["status"] == "succeeded", jobs
    results = app.services.settings.results_container
    final = jobs[0]["output"]
    assert final == f"{results}/chain.json.extract.out.transform.out"
    data = app.services.blobs.get_blob_client(results, final.split("/", 1)[1]) \
        .download_blob().readall()
    assert data == b"transform:extract:raw"


def test_failing_action_is_retried_then_moved_to_failed(start_app) -> None:
    app = start_app(MAX_ATTEMPTS="2")
    app.upload("bad.json", b'{"fail": true}')
    jobs = app.wait_for("the job to fail", lambda: [
        j for j in app.jobs() if j["status"] == "failed"], timeout=120)
    assert jobs[0]["attempts"] == 2 and "refusing input" in jobs[0]["error"]
    failed = app.blob_names(app.services.settings.failed_container)
    assert failed == ["bad.json", "bad.json.error.json"]


def test_event_grid_source_starts_the_job_as_in_azure(start_app) -> None:
    """With BLOB_TRIGGER_SOURCE=EventGrid nothing polls: the BlobCreated event starts the job."""
    app = start_app(BLOB_TRIGGER_SOURCE="EventGrid")
    container = app.services.settings.data_container
    app.upload("eg.json", b'{"via": "event grid"}')
    time.sleep(2)
    assert app.jobs() == []  # no polling source in this mode
    url = app.services.blobs.get_blob_client(container, "eg.json").url
    event = {"id": "1", "eventType": "Microsoft.Storage.BlobCreated",
             "subject": f"/blobServices/default/containers/{container}/blobs/eg.json",
             "data": {"api": "PutBlob", "url": url}}
    response = requests.post(f"{app.base}/runtime/webhooks/blobs",
                             params={"functionName": "Host.Functions.data_blob_trigger",
                                     "code": "e2e-master-key"}, json=[event], timeout=10)
    assert response.status_code == 202, response.text
    jobs = app.wait_for("the job", lambda: [j for j in app.jobs() if j["status"] == "succeeded"])
    assert jobs[0]["blob"] == f"{container}/eg.json"


def test_a_vm_whose_agent_died_holding_a_slot_returns_to_service(start_app) -> None:
    """One VM: its agent is SIGKILLed mid-file. The pool takes the backend's word (the VM is
    deallocated), hands its claim back, starts it again, and it finishes the file and takes
    new work; it is never `failed`. Then `pool.start` brings a failed VM back."""
    app = start_app(POOL_VMS="vm01", POOL_MAX_RUNNING="1", E2E_SLOW_SECONDS="6")
    app.upload("slow.json", b'{"slow": true}')
    claim = app.wait_for("a claim", app.services.claims.active, timeout=60)[0]
    assert claim.vm == "vm01"
    pid_file = Path(app.env["LOCAL_STATE_DIR"]) / "vm01.json"

    def agent_pid() -> int | None:  # the file goes when the VM is deallocated
        try:
            return json.loads(pid_file.read_text())["pid"]
        except (OSError, ValueError, KeyError):
            return None

    old_pid = agent_pid()
    assert old_pid is not None
    _kill_machine(old_pid)
    seen: list[str] = []

    def back_in_service() -> bool:
        state = app.services.registry.get("vm01").state
        seen.append(state.value)
        return state == VmState.RUNNING and agent_pid() not in (None, old_pid)

    app.wait_for("vm01 to run a new agent", back_in_service, timeout=120, every=0.2)
    assert "failed" not in seen, seen
    app.wait_for("the slow file", lambda: [
        j for j in app.jobs() if j["status"] == "succeeded"], timeout=120)
    app.upload("after.json", b'{"n": 2}')
    jobs = app.wait_for("the next file", lambda: (
        js if len(js := [j for j in app.jobs() if j["status"] == "succeeded"]) == 2 else None),
        timeout=120)
    assert {j["vm"] for j in jobs} == {"vm01"}  # the same VM took work again
    reason = app.services.registry.get("vm01").reason
    app.wait_for("vm01 to be deallocated once idle", lambda: app.services.registry.get(
        "vm01").state == VmState.DEALLOCATED and agent_pid() is None, timeout=90)
    # An operator's pool.start moves a failed VM (here: marked failed by hand) back into use.
    app.services.registry.transition("vm01", VmState.FAILED, [VmState.DEALLOCATED],
                                     reason="by hand")
    change = app.post("/api/changes", json={"changeType": "pool.start", "vms": ["vm01"]})
    assert change.status_code == 202, change.text
    change_id = change.json()["changeId"]
    last: list = []

    def change_done() -> dict | None:
        last[:] = [app.get(f"/api/changes/{change_id}").json(), app.services.registry.get("vm01")]
        return last[0] if last[0]["runtimeStatus"] == "Completed" else None

    try:
        status = app.wait_for("pool.start to finish", change_done, timeout=90)
    except AssertionError:
        raise AssertionError(f"pool.start did not finish: {last}") from None
    assert status["status"] == "succeeded", (status, reason)
    assert app.services.registry.get("vm01").state in (VmState.STARTING, VmState.RUNNING)


def test_a_file_whose_start_was_lost_is_started_by_the_sweep(start_app, tmp_path) -> None:
    """The trigger is off (as if its start had been lost with storage): the sweep on the scaler
    timer finds the file waiting with no orchestration and starts it, once."""
    counts = tmp_path / "counts"
    counts.mkdir()
    app = start_app(E2E_COUNT_DIR=str(counts),
                    **{"AzureWebJobs.data_blob_trigger.Disabled": "true"})
    body = b'{"orphan": true}'
    app.upload("orphan.json", body)
    owned = b'{"owned": true}'
    app.upload("owned-by-a-run.json", owned, metadata={"run_id": "someone-elses"})
    jobs = app.wait_for("the swept file to succeed", lambda: [
        j for j in app.jobs() if j["status"] == "succeeded"], timeout=120)
    assert [j["blob"].rsplit("/", 1)[1] for j in jobs] == ["orphan.json"]
    assert _executions(counts, "process", body) == 1
    events = app.services.log.day(kind="job.swept", limit=100)
    assert any("never started" in e.get("message", "") for e in events), events
    # A file its run owns is left to the run.
    assert app.blob_names(app.services.settings.data_container) == ["owned-by-a-run.json"]
