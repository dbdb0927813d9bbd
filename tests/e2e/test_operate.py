"""Operating the work from the API, end to end: idempotent submits and paged lists."""
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


@pytest.fixture()
def idle_app(start_app):
    """An app whose pool never starts a VM, so submitted work stays where it is."""
    return start_app(POOL_MAX_RUNNING="0")


def test_a_repeated_submit_with_the_same_key_starts_one_job(idle_app) -> None:
    app = idle_app
    body = {"blob": "same.json", "content": '{"values": [1]}'}
    first = app.post("/api/jobs", json=body, headers={"Idempotency-Key": "submit-1"})
    assert first.status_code == 202, first.text
    repeats = [app.post("/api/jobs", json=body, headers={"Idempotency-Key": "submit-1"})
               for _ in range(3)]
    in_body = app.post("/api/jobs", json={**body, "requestId": "submit-1"})
    for response in (*repeats, in_body):
        assert response.status_code == 202, response.text
        assert response.json() == first.json()
        assert response.headers.get("Idempotent-Replayed") == "true"
    # The content was uploaded once: a second upload would have been a new blob version
    # and so a second job.
    app.wait_for("the job row", app.jobs)
    assert [j["jobId"] for j in app.jobs()] == [first.json()["jobId"]]

    other = app.post("/api/jobs", json={"blob": "other.json", "content": "{}"},
                     headers={"Idempotency-Key": "submit-1"})
    assert other.status_code == 409, other.text
    assert other.json()["error"]["code"] == "IdempotencyKeyReused"
    assert "other.json" not in app.blob_names(app.services.settings.data_container)
    bad = app.post("/api/jobs", json=body, headers={"Idempotency-Key": "no spaces allowed"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "InvalidIdempotencyKey"
    assert len(app.jobs()) == 1


def test_runs_and_changes_are_idempotent_and_listed_in_pages(idle_app) -> None:
    app = idle_app
    for i in range(3):
        app.upload(f"batch/{i}.json", b"{}")
    runs = []
    for key in ("run-a", "run-b", "run-c"):
        first = app.post("/api/runs", json={"prefix": "batch/"}, headers={"Idempotency-Key": key})
        again = app.post("/api/runs", json={"prefix": "batch/", "requestId": key})
        assert first.status_code == again.status_code == 202, (first.text, again.text)
        assert first.json()["runId"] == again.json()["runId"]
        runs.append(first.json()["runId"])
    assert len(set(runs)) == 3
    reused = app.post("/api/runs", json={"prefix": "other/"}, headers={"Idempotency-Key": "run-a"})
    assert reused.status_code == 409

    def listed_runs() -> list[str] | None:
        seen, token = [], None
        while True:
            params = {"limit": "2", **({"continuationToken": token} if token else {})}
            answer = app.get("/api/runs", params=params).json()
            seen.extend(r["runId"] for r in answer["runs"])
            token = answer["continuationToken"]
            if token is None:
                return seen if len(seen) == 3 else None

    assert sorted(app.wait_for("three listed runs", listed_runs)) == sorted(runs)
    assert app.get("/api/runs", params={"status": "bogus"}).status_code == 400
    assert app.get("/api/runs", params={"continuationToken": "garbage!"}).status_code == 400

    change = {"changeType": "pool.start", "vms": ["vm01"]}
    first = app.post("/api/changes", json=change, headers={"Idempotency-Key": "chg-1"})
    again = app.post("/api/changes", json=change, headers={"Idempotency-Key": "chg-1"})
    assert first.status_code == again.status_code == 202
    assert first.json()["changeId"] == again.json()["changeId"]
    other = app.post("/api/changes", json={"changeType": "pool.stop", "vms": ["vm01"]},
                     headers={"Idempotency-Key": "chg-1"})
    assert other.status_code == 409
    second = app.post("/api/changes", json={"changeType": "pool.stop", "vms": ["vm02"]})
    listed = app.get("/api/changes", params={"limit": "1"}).json()
    assert listed["count"] == 1 and listed["continuationToken"]
    rest = app.get("/api/changes", params={"limit": "1",
                                           "continuationToken": listed["continuationToken"]})
    ids = [listed["changes"][0]["changeId"], rest.json()["changes"][0]["changeId"]]
    assert sorted(ids) == sorted([first.json()["changeId"], second.json()["changeId"]])
    assert rest.json()["continuationToken"] is None
    only = app.get("/api/changes", params={"changeType": "pool.stop"}).json()["changes"]
    assert [c["changeId"] for c in only] == [second.json()["changeId"]]

    for i in range(5):
        response = app.post("/api/jobs", json={"blob": f"j{i}.json", "content": "{}"})
        assert response.status_code == 202, response.text
    app.wait_for("five jobs", lambda: sum(1 for j in app.jobs() if "/j" in j["blob"]) == 5)
    ids, token = [], None
    while True:
        answer = app.get("/api/jobs", params={"limit": "3", "continuationToken": token or ""})
        ids.extend(j["jobId"] for j in answer.json()["jobs"])
        token = answer.json()["continuationToken"]
        if token is None:
            break
    everything = [j["jobId"] for j in app.jobs()]
    assert len(ids) == len(set(ids)) and set(ids) >= {j for j in everything}


def _summary(app, run_id: str, status: str) -> dict | None:
    """The run's summary once it has `status`."""
    summary = app.get(f"/api/runs/{run_id}").json()["summary"] or {}
    return summary if summary.get("status") == status else None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_a_job_cancelled_while_its_action_runs_stops_it_and_frees_the_vm(start_app,
                                                                          tmp_path) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    app = start_app(POOL_MAX_RUNNING="1", E2E_SLOW_SECONDS="120", E2E_PID_DIR=str(pids))
    job_id = app.post("/api/jobs", json={"blob": "long.json", "content": "slow"}).json()["jobId"]
    pid = int(app.wait_for("the action to start", lambda: next(
        (p.name for p in pids.iterdir()), None), timeout=120))
    assert _alive(pid)
    vm = app.wait_for("the job to run", lambda: app.get(f"/api/jobs/{job_id}").json()["vm"]
                      or next((v["name"] for v in app.pool()["vms"] if v["busy"]), None))
    assert app.services.registry.get(vm).busy == 1

    cancelled = app.post(f"/api/jobs/{job_id}/cancel",
                         json={"reason": "wrong file", "requestedBy": "operator-7"})
    assert cancelled.status_code == 202, cancelled.text
    job = app.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "cancelled"
    assert job["cancelled"]["by"] == "operator-7" and job["cancelled"]["reason"] == "wrong file"
    assert job["cancelled"]["at"]
    app.wait_for("the action process to be killed", lambda: not _alive(pid), timeout=60)
    app.wait_for("the slot to be released", lambda: app.services.registry.get(vm).busy == 0)
    claims = app.services.claims.table.query_entities(f"PartitionKey eq '{job_id}'")
    assert {c["state"] for c in claims} == {"withdrawn"}
    app.wait_for("the orchestration to end", lambda: app.get(f"/api/jobs/{job_id}").json()
                 ["orchestration"]["runtimeStatus"] == "Completed")
    app.wait_for("the VM to deallocate after its cooldown",
                 lambda: app.services.registry.get(vm).state.value == "deallocated", timeout=90)
    assert app.services.work_queue.peek_messages(max_messages=32) == []
    assert "long.json" in app.blob_names(app.services.settings.failed_container)
    again = app.post(f"/api/jobs/{job_id}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "JobFinished"
    assert app.post("/api/jobs/nope/cancel").status_code == 404
    assert app.get(f"/api/jobs/{job_id}").json()["status"] == "cancelled"


def test_a_run_cancelled_half_way_records_a_partial_summary(start_app) -> None:
    app = start_app(POOL_MAX_RUNNING="1", E2E_SLOW_SECONDS="3")
    names = [f"half/{i}.json" for i in range(6)]
    for name in names:  # uploaded with a run id: the blob trigger leaves them to the run
        app.upload(name, b"slow", metadata={"run_id": "manual"})
    run_id = app.post("/api/runs", json={"blobs": names}).json()["runId"]
    app.wait_for("a first finished file", lambda: any(
        j["status"] == "succeeded" for j in app.jobs(runId=run_id)), timeout=180)
    response = app.post(f"/api/runs/{run_id}/cancel", json={"requestedBy": "ops"})
    assert response.status_code == 202, response.text

    done = app.wait_for("the run's partial summary", lambda: _summary(app, run_id, "cancelled"),
                        timeout=120)
    assert done["files"] == 6 and done["succeeded"] >= 1 and done["cancelled"] >= 1
    assert done["succeeded"] + done["failed"] + done["cancelled"] == 6
    assert done["cancelledBy"] == "ops"
    jobs = app.jobs(runId=run_id)
    assert all(j["status"] in ("succeeded", "cancelled") for j in jobs)
    assert sum(j["status"] == "succeeded" for j in jobs) == done["succeeded"]
    assert app.post(f"/api/runs/{run_id}/cancel").status_code == 409
    assert app.post("/api/runs/no-such-run/cancel").status_code == 404


def test_failed_work_is_retried_once_the_action_is_fixed(start_app, tmp_path) -> None:
    fix = tmp_path / "fixed"
    app = start_app(MAX_ATTEMPTS="1", E2E_FIX_FILE=str(fix))
    failed_container = app.services.settings.failed_container
    job_id = app.post("/api/jobs", json={"blob": "broken.json", "content": "fail"}).json()["jobId"]
    app.wait_for("the job to fail", lambda: app.get(f"/api/jobs/{job_id}").json().get("status")
                 == "failed", timeout=120)
    app.wait_for("the original in failed/", lambda: "broken.json" in app.blob_names(
        failed_container))
    for name in ("a", "b", "c", "d"):
        app.upload(f"mix/{name}.json", b"fail" if name in "bd" else b"fine",
                   metadata={"run_id": "manual"})
    run_id = app.post("/api/runs", json={"prefix": "mix/"}).json()["runId"]
    first = app.wait_for("the run to complete", lambda: _summary(app, run_id, "completed"),
                         timeout=180)
    assert (first["succeeded"], first["failed"]) == (2, 2)

    fix.write_text("")  # the action is fixed
    retried = app.post(f"/api/jobs/{job_id}/retry")
    assert retried.status_code == 202, retried.text
    new_id = retried.json()["jobId"]
    assert new_id != job_id and retried.json()["retryOf"] == job_id
    assert app.post(f"/api/jobs/{job_id}/retry").json()["jobId"] == new_id  # a repeat: same job
    app.wait_for("the retry to succeed", lambda: app.get(f"/api/jobs/{new_id}").json().get("status")
                 == "succeeded", timeout=120)
    assert app.get(f"/api/jobs/{new_id}").json()["retryOf"] == job_id
    assert app.get(f"/api/jobs/{job_id}").json()["retriedBy"] == new_id
    assert "broken.json" in app.blob_names(app.services.settings.archive_container)
    again = app.post(f"/api/jobs/{new_id}/retry")
    assert again.status_code == 409 and again.json()["error"]["code"] == "NotRetryable"

    response = app.post(f"/api/runs/{run_id}/retry-failed")
    assert response.status_code == 202, response.text
    second_id = response.json()["runId"]
    assert response.json()["files"] == 2 and response.json()["retryOf"] == run_id
    second = app.wait_for("the retry run", lambda: _summary(app, second_id, "completed"),
                          timeout=180)
    assert (second["files"], second["succeeded"], second["failed"]) == (2, 2, 0)
    assert second["retryOf"] == run_id
    rerun = sorted(j["blob"].split("/", 1)[1] for j in app.jobs(runId=second_id))
    assert rerun == ["mix/b.json", "mix/d.json"]  # exactly the failed files, nothing else
    assert app.get(f"/api/runs/{run_id}").json()["summary"]["retriedBy"] == second_id
    nothing = app.post(f"/api/runs/{second_id}/retry-failed")
    assert nothing.status_code == 409 and nothing.json()["error"]["code"] == "NothingToRetry"


class _Receiver:
    """A webhook receiver on loopback: records every request; paths under /flaky/ answer 500
    twice, then 200."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.requests.append((self.path, dict(self.headers), body))
                    seen = sum(1 for p, _, _ in receiver.requests if p == self.path)
                failing = self.path.startswith("/flaky/") and seen <= 2
                self.send_response(500 if failing else 200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def at(self, path: str) -> list[tuple[str, dict[str, str], bytes]]:
        with self.lock:
            return [r for r in self.requests if r[0] == path]


def _documented_verify():
    """The verification recipe exactly as docs/webhooks.md gives it."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "webhooks.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)
    namespace: dict = {}
    exec(compile(code, "docs/webhooks.md", "exec"), namespace)  # noqa: S102 - our own docs
    return namespace["verify"]


def test_webhooks_are_signed_retried_and_refused_for_private_addresses(start_app) -> None:
    receiver = _Receiver()
    key = "e2e-webhook-key"
    app = start_app(WEBHOOK_SIGNING_KEY=key, WEBHOOK_ALLOW_HOSTS="127.0.0.1",
                    WEBHOOK_BACKOFF_SECONDS="1", WEBHOOK_MAX_ATTEMPTS="4")
    verify = _documented_verify()
    for url in ("https://10.0.0.7/hook", "https://169.254.169.254/latest", "https://[::1]/x",
                "https://192.168.1.1/x", "ftp://127.0.0.1/x", "https://user:pw@127.0.0.1/x",
                "not a url", "http://[::ffff:10.0.0.1]/x"):
        refused = app.post("/api/jobs", json={"blob": "hook.json", "content": "{}",
                                              "callbackUrl": url})
        assert refused.status_code == 400, (url, refused.text)
        assert refused.json()["error"]["code"] == "InvalidCallbackUrl", url
    assert app.post("/api/changes", json={"changeType": "pool.start", "vms": ["vm03"],
                                          "callbackUrl": "https://10.1.1.1/"}).status_code == 400
    assert app.jobs() == [] and "hook.json" not in app.blob_names(
        app.services.settings.data_container)  # a refused request uploaded nothing

    ok = app.post("/api/jobs", json={"blob": "hook.json", "content": "{}",
                                     "callbackUrl": f"{receiver.url}/ok/job"}).json()["jobId"]
    flaky = app.post("/api/jobs", json={"blob": "flaky.json", "content": "{}",
                                        "callbackUrl": f"{receiver.url}/flaky/job"}
                     ).json()["jobId"]
    app.upload("hooked/a.json", b"{}", metadata={"run_id": "manual"})
    run_id = app.post("/api/runs", json={"prefix": "hooked/",
                                         "callbackUrl": f"{receiver.url}/ok/run"}).json()["runId"]
    change_id = app.post("/api/changes", json={"changeType": "pool.stop", "vms": ["vm03"],
                                               "callbackUrl": f"{receiver.url}/ok/change"}
                         ).json()["changeId"]
    app.wait_for("the flaky receiver's third attempt",
                 lambda: [r for r in receiver.at("/flaky/job") if b'"succeeded"' in r[2]][2:],
                 timeout=180)
    for path, event, resource_id in (("/ok/job", "job.succeeded", ok),
                                     ("/ok/run", "run.completed", run_id),
                                     ("/ok/change", "change.succeeded", change_id)):
        app.wait_for(f"the {event} delivery", lambda p=path: receiver.at(p), timeout=180)
        time.sleep(1)
        (request,) = receiver.at(path)  # exactly one delivery per final state
        _, headers, body = request
        headers = {k.lower(): v for k, v in headers.items()}
        assert verify(headers["x-vmpool-signature"], body, key)
        assert not verify(headers["x-vmpool-signature"], body + b" ", key)
        assert not verify(headers["x-vmpool-signature"], body, "another key")
        payload = json.loads(body)
        assert payload["event"] == event == headers["x-vmpool-event"]
        assert resource_id in json.dumps(payload["resource"])
    attempts = receiver.at("/flaky/job")
    assert len(attempts) == 3
    assert all(verify(h.get("X-VmPool-Signature", ""), b, key) for _, h, b in attempts)
    assert len({json.loads(b)["deliveryId"] for _, _, b in attempts}) == 1

    def recorded() -> list | None:
        deliveries = app.get(f"/api/jobs/{flaky}").json()["deliveries"]
        return deliveries if len(deliveries) == 3 else None

    deliveries = app.wait_for("three recorded attempts", recorded)
    assert [(d["attempt"], d["status"], d["delivered"]) for d in deliveries] == [
        (1, 500, False), (2, 500, False), (3, 200, True)]
    assert [d["event"] for d in app.get(f"/api/runs/{run_id}").json()["deliveries"]] == [
        "run.completed"]
    assert app.get(f"/api/changes/{change_id}").json()["deliveries"][0]["delivered"] is True


def _power_intervals(state_dir: Path) -> dict[str, float]:
    """Start-to-deallocated seconds per VM from the local backend's own record of its
    processes (its `stop` and `exit` lines fall in between: billing runs until the
    deallocation completed)."""
    starts: dict[int, tuple[str, float]] = {}
    seconds: dict[str, float] = {}
    for line in (state_dir / "power.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "start":
            starts[event["pid"]] = (event["vm"], event["at"])
        elif event["event"] == "deallocated" and event["pid"] in starts:
            vm, began = starts.pop(event["pid"])
            seconds[vm] = seconds.get(vm, 0.0) + event["at"] - began
    assert not starts, f"processes still running: {starts}"
    return seconds


def test_billed_vm_seconds_match_the_backends_record_and_add_up(start_app, tmp_path) -> None:
    app = start_app(POOL_MAX_RUNNING="2", E2E_SLOW_SECONDS="2", VM_PRICES="default=3.6")
    names = [f"costly/{i}.json" for i in range(4)]
    for name in names:
        app.upload(name, b"slow", metadata={"run_id": "manual"})
    run_id = app.post("/api/runs", json={"blobs": names}).json()["runId"]
    app.wait_for("the run", lambda: _summary(app, run_id, "completed"), timeout=180)
    app.wait_for("every VM to be deallocated", lambda: all(
        v["state"] == "deallocated" for v in app.pool()["vms"]), timeout=120)

    pool = app.pool()
    measured = _power_intervals(tmp_path / "pool")
    assert measured, "no VM ran"
    reported = {v["name"]: v["billedSeconds"] for v in pool["vms"] if v["billedSeconds"]}
    assert set(reported) == set(measured)
    total_measured, total_reported = sum(measured.values()), sum(reported.values())
    print(f"billed VM-seconds: reported {total_reported:.3f}, backend {total_measured:.3f}")
    assert abs(total_reported - total_measured) <= 0.02 * total_measured
    for vm, seconds in measured.items():
        assert abs(reported[vm] - seconds) <= 0.02 * seconds, vm

    cost = pool["cost"]
    parts = cost["bootVmSeconds"] + cost["processingVmSeconds"] + cost["idleVmSeconds"]
    assert abs(parts - cost["billedVmSeconds"]) < 0.01
    assert abs(cost["billedVmSeconds"] - total_reported) < 0.01
    assert cost["processingVmSeconds"] >= 4 * 2 * 0.9  # four files of two seconds each
    assert cost["bootVmSeconds"] > 0 and cost["idleVmSeconds"] > 0
    assert abs(cost["money"] - cost["billedVmSeconds"] / 1000) < 0.001  # 3.6 an hour

    run_cost = app.get(f"/api/runs/{run_id}").json()["cost"]
    assert abs(run_cost["bootVmSeconds"] + run_cost["processingVmSeconds"]
               + run_cost["idleVmSeconds"] - run_cost["billedVmSeconds"]) < 0.01
    assert abs(run_cost["processingVmSeconds"] - cost["processingVmSeconds"]) < 0.01
    job = app.jobs(runId=run_id)[0]
    job_cost = app.get(f"/api/jobs/{job['jobId']}").json()["cost"]
    assert 1.8 <= job_cost["processingVmSeconds"] <= 30
    # Priced by the member the job ran on (regular here, 3.6 an hour).
    assert abs(job_cost["money"] - job_cost["processingVmSeconds"] / 1000) < 1e-5

    report = app.get("/api/cost").json()
    assert abs(sum(d["billedVmSeconds"] for d in report["days"]) - total_reported) < 0.05
    (row,) = [r for r in report["runs"] if r["runId"] == run_id]
    assert abs(row["billedVmSeconds"] - run_cost["billedVmSeconds"]) < 0.05
    assert abs(row["billedVmSeconds"] + report["unattributed"]["billedVmSeconds"]
               - total_reported) < 0.05
    assert app.get("/api/cost", params={"from": "yesterday"}).status_code == 400
    empty = app.get("/api/cost", params={"from": "2026-01-02T00:00:00Z",
                                         "to": "2026-01-01T00:00:00Z"}).json()
    assert empty["days"] == [] and empty["total"]["billedVmSeconds"] == 0
