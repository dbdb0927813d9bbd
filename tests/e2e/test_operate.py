"""Operating the work from the API, end to end: idempotent submits and paged lists."""
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
