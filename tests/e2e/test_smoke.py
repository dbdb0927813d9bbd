"""One file through the whole app: blob trigger → work item → local VM → done → result."""


def test_one_file_end_to_end(start_app) -> None:
    app = start_app()
    assert app.get("/api/health").json()["status"] == "healthy"
    app.upload("one.json", b'{"x": 1}')
    jobs = app.wait_for("a succeeded job", lambda: [
        j for j in app.jobs() if j["status"] == "succeeded"], timeout=90)
    assert jobs[0]["blob"].endswith("/one.json")
    results = app.blob_names(app.services.settings.results_container)
    assert results == ["one.json.process.out"]
