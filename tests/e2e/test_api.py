"""The HTTP API end to end: refusals that change nothing, pool changes, the deployment gate."""
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from shared.pool.registry import VmState
from shared.workitem import WorkItem
from tools.polling import poll

POSTS = ["/api/jobs", "/api/runs", "/api/changes", "/api/vms/vm01/jobs/job-x/done",
         "/api/vms/vm01/idle"]


@pytest.fixture()
def idle_app(start_app):
    """An app whose pool never starts a VM, so work items stay on the queue to inspect."""
    return start_app(POOL_MAX_RUNNING="0", MAX_BODY_BYTES="4096")


def test_malformed_and_oversized_requests_on_every_endpoint(idle_app) -> None:
    app = idle_app
    for path in POSTS:
        bad = app.post(path, data=b"{not json")
        assert bad.status_code == 400, (path, bad.text)
        assert bad.json()["error"]["code"] in ("InvalidJson", "BadRequest"), path
        big = app.post(path, data=b"[" + b"1," * 5000 + b"1]")
        assert big.status_code == 413, (path, big.text)
        assert big.json()["error"]["code"] == "PayloadTooLarge", path
    for path, params in [("/api/jobs", {"limit": "many"}), ("/api/jobs", {"status": "odd"})]:
        response = app.get(path, params=params)
        assert response.status_code == 400 and "error" in response.json()
    assert app.post("/api/jobs", json={"blob": "../etc/passwd"}).status_code == 400
    assert app.post("/api/jobs", json={"blob": "missing.json"}).status_code == 404
    assert app.post("/api/changes", json={"changeType": "pool.explode", "vms": ["vm01"]}) \
        .status_code == 400
    assert app.post("/api/changes", json={"changeType": "pool.remove", "vms": ["vm99"]}) \
        .status_code == 404
    assert app.get("/api/jobs/nope").status_code == 404
    assert app.get("/api/changes/change-0000000000000000").status_code == 404
    no_key = app.http.post(app.base + "/api/jobs", json={"blob": "x"},
                           headers={"x-functions-key": ""}, timeout=10)
    assert no_key.status_code == 401
    assert app.services.jobs.list() == []  # none of that created anything


def test_forged_replayed_and_wrong_vm_callbacks_are_refused(idle_app) -> None:
    app = idle_app
    for name in ("a.json", "b.json"):
        response = app.post("/api/jobs", json={"blob": name, "content": "{}"})
        assert response.status_code == 202, response.text
    queue = app.services.work_queue
    def two_items() -> list[WorkItem] | None:
        items = [WorkItem.from_json(m.content) for m in queue.peek_messages(max_messages=32)]
        return items if len(items) == 2 else None

    items = app.wait_for("two work items", two_items)
    a, b = sorted(items, key=lambda i: i.blob)
    app.services.registry.transition("vm01", VmState.RUNNING, [VmState.DEALLOCATED])
    app.services.claims.claim(a, "vm01")
    app.services.claims.claim(b, "vm02")
    results = app.services.settings.results_container

    def done(vm: str, item: WorkItem, token: str, job_id: str | None = None):
        return app.post(f"/api/vms/{vm}/jobs/{job_id or item.job_id}/done", json={
            "step": item.step, "attempt": item.attempt, "token": token, "status": "succeeded",
            "output": f"{results}/{item.blob_name}.process.out", "bytesIn": 2, "bytesOut": 3})

    forged = done("vm01", a, "f" * 64)
    replayed = done("vm02", b, a.token)          # a's token replayed on b's job
    wrong_vm = done("vm02", a, a.token)          # genuine token, but vm02 doesn't hold a
    for response, code in ((forged, "InvalidToken"), (replayed, "InvalidToken"),
                           (wrong_vm, "NotClaimed")):
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == code
    outsider = done("vm07", a, a.token)          # not a member, and not holding the claim
    assert outsider.status_code == 403 and outsider.json()["error"]["code"] == "NotClaimed"
    job = app.get(f"/api/jobs/{a.job_id}").json()
    assert job["status"] == "running" and job["orchestration"]["runtimeStatus"] == "Running"
    assert app.services.issued.get(a.job_id, 0, 1)[1] is False  # nothing acknowledged
    first, repeat = done("vm01", a, a.token), done("vm01", a, a.token)
    assert first.json() == {"accepted": True, "repeat": False}
    assert repeat.status_code == 200 and repeat.json()["repeat"] is True


def test_pool_changes_with_visible_progress_and_deployment_gate(start_app) -> None:
    app = start_app(E2E_SLOW_SECONDS="4")
    gate = app.get("/api/deployment/status").json()
    assert gate["hasRunning"] is False
    app.upload("slow.json", b'{"slow": 1}')
    app.wait_for("the gate to see a running orchestration",
                 lambda: app.get("/api/deployment/status").json()["hasRunning"], timeout=30)
    response = app.post("/api/changes", json={"changeType": "pool.add", "vms": ["vm04"]})
    assert response.status_code == 202, response.text
    change_id = response.json()["changeId"]
    seen = []

    def completed() -> dict | None:
        status = app.get(f"/api/changes/{change_id}").json()
        seen.append(status.get("progress"))
        return status if status["runtimeStatus"] == "Completed" else None

    status = app.wait_for("pool.add to finish", completed, timeout=60)
    assert status["status"] == "succeeded" and status["progress"] == "2/2"
    assert [s["step"] for s in status["steps"]] == ["provision", "register"]
    assert seen[-1] == "2/2" and all(s["status"] == "done" for s in status["steps"])
    assert "vm04" in [vm["name"] for vm in app.pool()["vms"]]
    removal = app.post("/api/changes", json={"changeType": "pool.remove", "vms": ["vm04"]})
    assert removal.status_code == 202
    removal_id = removal.json()["changeId"]
    def removed() -> dict | None:
        status = app.get(f"/api/changes/{removal_id}").json()
        return status if status["runtimeStatus"] == "Completed" else None

    status = app.wait_for("pool.remove to finish", removed, timeout=90)
    assert status["status"] == "succeeded", status
    assert [s["step"] for s in status["steps"]] == [
        "drain", "wait_idle", "deallocate", "delete", "unregister"]
    assert "vm04" not in [vm["name"] for vm in app.pool()["vms"]]
    again = app.post("/api/changes", json={"changeType": "pool.add", "vms": ["vm01"]})
    assert again.status_code == 409
    app.wait_for("the job", lambda: [j for j in app.jobs() if j["status"] == "succeeded"])
    app.wait_for("the gate to clear",
                 lambda: not app.get("/api/deployment/status").json()["hasRunning"], timeout=60)
    row = app.services.table(app.services.settings.change_table).get_entity(change_id, "change")
    assert row["status"] == "succeeded" and row["progress"] == "2/2"


def test_inputs_that_used_to_fail_with_500_get_4xx_json_and_change_nothing(start_app) -> None:
    """Each input once answered 500 (or was accepted and failed later); now a 4xx JSON error."""
    app = start_app(POOL_MAX_RUNNING="0")
    cases = [
        ("POST", "/api/jobs", b'{"blob": "lone-\\ud800.json", "content": "{}"}'),
        ("POST", "/api/jobs", b'{"blob": "ok.json", "content": "bad \\udfff"}'),
        ("GET", "/api/jobs/a%2Fb", None),
        ("GET", "/api/runs/a%2Fb", None),
        ("POST", "/api/vms/vm01/jobs/a%2Fb/done", b'{"step": 0, "attempt": 1, "token": "t", '
                                                   b'"status": "succeeded"}'),
        ("POST", "/api/vms/vm01/idle", b'{"idleSeconds": NaN}'),
        ("POST", "/api/vms/vm01/idle", b'{"idleSeconds": Infinity}'),
        ("POST", "/api/vms/vm01/idle", b'{"idleSeconds": 1e999}'),
        ("POST", "/api/runs", json.dumps({"prefix": "\u0000"}).encode()),
        ("POST", "/api/runs", json.dumps({"prefix": "p" * 200_000}).encode()),
        ("POST", "/api/jobs", json.dumps({"blob": "n" * 1024, "content": "{}"}).encode()),
        ("POST", "/api/jobs", json.dumps({"blob": "n" * 1013, "content": "{}"}).encode()),
        ("POST", "/api/runs", json.dumps({"blobs": ["n" * 1024]}).encode()),
        ("POST", "/api/runs", json.dumps({"prefix": "", "runId": "run-20300101T000000Z"})
         .encode()),
        ("POST", "/api/runs", json.dumps({"prefix": "", "blobs": ["x"]}).encode()),
        ("POST", "/api/runs", json.dumps({"blobs": []}).encode()),
        ("POST", "/api/jobs", b"[" * 100_000 + b"]" * 100_000),  # nested 100,000 deep
        ("POST", "/api/runs", b'{"blobs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ]
    for method, path, body in cases:
        response = app.http.request(method, app.base + path, data=body, timeout=30)
        assert 400 <= response.status_code < 500, (path, body and body[:80], response.text)
        assert response.headers["Content-Type"].startswith("application/json"), path
        assert set(response.json()["error"]) == {"code", "message"}, path
    longest = "n" * 1012  # 1012 + ".process.out" is exactly 1024
    accepted = app.post("/api/jobs", json={"blob": longest, "content": "{}"})
    assert accepted.status_code == 202, accepted.text
    assert app.blob_names(app.services.settings.data_container) == [longest]
    jobs = app.wait_for("the job row", app.jobs)
    assert [j["blob"] for j in jobs] == [f"{app.services.settings.data_container}/{longest}"]
    assert app.get("/api/runs/run-20300101T000000Z").status_code == 404  # nothing started


def test_a_failed_orchestration_shows_no_traceback_or_server_path(start_app) -> None:
    app = start_app(POOL_MAX_RUNNING="0")
    # No container: the list-files activity fails with a KeyError, and the host records the
    # orchestration as failed with that activity's traceback.
    started = requests.post(
        f"{app.base}/runtime/webhooks/durabletask/orchestrators/process_run/broken-run",
        params={"code": app.env["DEVHOST_MASTER_KEY"]},
        json={"runId": "broken-run", "prefix": ""}, timeout=30)
    assert started.status_code == 202, started.text

    def failed() -> dict | None:
        body = app.get("/api/runs/broken-run").json()
        orchestration = body.get("orchestration") or {}
        return body if orchestration.get("runtimeStatus") == "Failed" else None

    body = app.wait_for("the run to fail", failed, timeout=60)
    text = json.dumps(body)
    assert "Traceback" not in text and 'File "' not in text
    assert str(Path(__file__).resolve().parents[2]) not in text and "site-packages" not in text
    assert "process_run" in body["orchestration"]["output"]  # still says what failed


def test_racing_and_retried_done_calls_raise_the_event_once(idle_app) -> None:
    """Eight identical callbacks at once, and a retry after the post-raise write failed: the
    orchestration hears `done` exactly once."""
    app = idle_app
    assert app.post("/api/jobs", json={"blob": "once.json", "content": "{}"}).status_code == 202
    queue = app.services.work_queue
    item = app.wait_for("the work item", lambda: [
        WorkItem.from_json(m.content) for m in queue.peek_messages(max_messages=1)])[0]
    app.services.registry.transition("vm01", VmState.RUNNING, [VmState.DEALLOCATED])
    app.services.claims.claim(item, "vm01")
    # The event log write after raising fails from now on (its table is gone).
    app.services.log.table.delete_table()
    results = app.services.settings.results_container
    body = {"step": item.step, "attempt": item.attempt, "token": item.token,
            "status": "succeeded", "output": f"{results}/{item.blob_name}.process.out",
            "bytesIn": 2, "bytesOut": 3}
    url = f"/api/vms/vm01/jobs/{item.job_id}/done"
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: app.post(url, json=body), range(8)))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert sorted(a.json()["repeat"] for a in answers) == [False] + [True] * 7
    assert app.post(url, json=body).json() == {"accepted": True, "repeat": True}
    app.services.log.table.create_table()
    app.wait_for("the job to finish", lambda: app.get(f"/api/jobs/{item.job_id}").json()
                 ["status"] == "succeeded", timeout=90)
    status = requests.get(
        f"{app.base}/runtime/webhooks/durabletask/instances/{item.instance_id}",
        params={"code": app.env["DEVHOST_MASTER_KEY"], "showHistory": "true"}, timeout=30)
    raised = [e for e in status.json()["historyEvents"]
              if e["EventType"] == "EventRaised" and e.get("Name") == f"done-{item.step}-"
              f"{item.attempt}"]
    assert len(raised) == 1, raised


def test_a_terminated_job_is_swept_and_run_again(start_app) -> None:
    """A job whose orchestration was terminated (its row still running, its file still in
    data/) is found by the sweeper on the scaler timer and started again under its id."""
    app = start_app(POOL_MAX_RUNNING="0")
    answer = app.post("/api/jobs", json={"blob": "stuck.json", "content": "{}"})
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["jobId"]
    app.wait_for("the job row", lambda: app.get(f"/api/jobs/{job_id}").json().get("status")
                 in ("queued", "running"))
    mgmt = f"{app.base}/runtime/webhooks/durabletask/instances/{job_id}"
    key = {"code": app.env["DEVHOST_MASTER_KEY"]}

    def swept() -> list[dict]:
        return [e for e in app.services.log.day(kind="job.swept") if e["jobId"] == job_id]

    def terminated() -> bool:
        # The sweep may restart it before a poll sees it terminated: either is the termination.
        return bool(swept()) or requests.get(mgmt, params=key, timeout=30).json()[
            "runtimeStatus"] == "Terminated"

    # devhost's engine now and then drops a terminate that arrives while the instance is
    # between episodes (seen about once in six runs, not yet fixed): ask again, as an operator
    # would; what this test is about is the sweep that follows.
    for _ in range(3):
        answer = requests.post(f"{mgmt}/terminate", params={**key, "reason": "test"},
                               timeout=30)
        assert answer.status_code in (202, 410), answer.text
        if poll(terminated, 15, 0.5):
            break
    app.wait_for("the termination", terminated, timeout=30)
    events = app.wait_for("the sweeper", swept, timeout=120)
    assert "Terminated: restarted it" in events[0]["message"]
    status = requests.get(mgmt, params=key, timeout=30).json()
    assert status["runtimeStatus"] in ("Pending", "Running")
    assert app.blob_names(app.services.settings.data_container) == ["stuck.json"]


def test_pool_remove_finishes_against_a_warm_floor(start_app) -> None:
    """POOL_MIN_RUNNING keeps two VMs up; removing one of them must not be undone by the
    floor starting it again while the change drains and deallocates it."""
    app = start_app(POOL_VMS="vm01..vm02", POOL_MIN_RUNNING="2", POOL_MAX_RUNNING="2")
    app.wait_for("the warm floor", lambda: sorted(
        v["name"] for v in app.pool()["vms"] if v["state"] == "running") == ["vm01", "vm02"],
        timeout=90)
    removal = app.post("/api/changes", json={"changeType": "pool.remove", "vms": ["vm02"]})
    assert removal.status_code == 202, removal.text
    change_id = removal.json()["changeId"]
    status = app.wait_for("pool.remove against the floor", lambda: (s := app.get(
        f"/api/changes/{change_id}").json())["runtimeStatus"] == "Completed" and s, timeout=120)
    assert status["status"] == "succeeded", status
    assert all(step["status"] == "done" for step in status["steps"]), status
    # (vm02 is in POOL_VMS, so the next pass lists it again, deallocated: the setting is the
    # declared pool; pool.remove is for members that pool.add brought in.)
