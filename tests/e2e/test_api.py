"""The HTTP API end to end: refusals that change nothing, pool changes, the deployment gate."""
import pytest

from shared.pool.registry import VmState
from shared.workitem import WorkItem

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
    assert done("vm07", a, a.token).status_code == 404
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
