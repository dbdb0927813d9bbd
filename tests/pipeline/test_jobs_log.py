"""Job rows and the event log against Azurite: idempotent writes, no regression after finish."""
from datetime import datetime, timedelta, timezone

import pytest

from shared.contracts import FAILED, QUEUED, RUNNING, SUCCEEDED
from shared.eventlog import EventLog, RecentTimes
from shared.jobs import JobNotFound, JobStore
from shared.settings import Settings
from shared.storage import StorageConnection, ensure_resources


@pytest.fixture()
def jobs(settings: Settings, connection: StorageConnection) -> JobStore:
    ensure_resources(settings, connection)
    return JobStore(connection.table_service().get_table_client(settings.result_table))


def test_queued_twice_is_one_row(jobs: JobStore) -> None:
    first = jobs.record_queued("j1", "file-1", "data", "a.json", ("process",))
    again = jobs.record_queued("j1", "file-1", "data", "a.json", ("process",), run_id="r")
    assert first.status == again.status == QUEUED
    assert again.run_id == ""  # the first write wins; a repeat changes nothing
    assert [j.job_id for j in jobs.list()] == ["j1"]


def test_lifecycle_and_repeated_result(jobs: JobStore) -> None:
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    jobs.record_queued("j2", "file-2", "data", "b.json", ("extract", "transform"), now=start)
    running = jobs.record_attempt("j2", step=1, attempt=2, now=start + timedelta(seconds=1))
    assert (running.status, running.step, running.attempts) == (RUNNING, 1, 2)
    done = jobs.record_finished("j2", SUCCEEDED, vm="vm01", bytes_in=10, bytes_out=20,
                                output="results/b.json.transform.out",
                                now=start + timedelta(seconds=3))
    assert done.status == SUCCEEDED and done.duration_ms == 2000
    repeat = jobs.record_finished("j2", FAILED, error="late failure")
    assert repeat.status == SUCCEEDED and repeat.error == ""
    late = jobs.record_attempt("j2", step=0, attempt=3)
    assert late.status == SUCCEEDED and late.attempts == 2
    api = done.to_api()
    assert api["blob"] == "data/b.json" and api["actions"] == ["extract", "transform"]


def test_filters_and_unknown_job(jobs: JobStore) -> None:
    jobs.record_queued("a", "i-a", "data", "a", ("p",), run_id="run-1")
    jobs.record_queued("b", "i-b", "data", "b", ("p",), run_id="run-2")
    jobs.record_finished("b", FAILED, error="boom")
    assert [j.job_id for j in jobs.list(run_id="run-1")] == ["a"]
    assert [j.job_id for j in jobs.list(status=FAILED)] == ["b"]
    assert jobs.list(status="x' or RowKey ne '") == []  # quoted: injection finds nothing
    with pytest.raises(JobNotFound):
        jobs.get("missing")


def test_event_log_newest_first(settings: Settings, connection: StorageConnection) -> None:
    ensure_resources(settings, connection)
    log = EventLog(connection.table_service().get_table_client(settings.log_table))
    now = datetime.now(timezone.utc)
    log.write("job.queued", "first", job_id="j", now=now)
    log.write("job.done", "second", job_id="j", data={"bytes": 3},
              now=now + timedelta(milliseconds=5))
    events = log.day(now)
    assert [e["message"] for e in events] == ["second", "first"]
    assert events[0]["data"] == {"bytes": 3}
    assert [e["kind"] for e in log.day(now, kind="job.queued")] == ["job.queued"]


def test_event_times_read_only_the_recent_window(settings: Settings,
                                                 connection: StorageConnection) -> None:
    ensure_resources(settings, connection)
    log = EventLog(connection.table_service().get_table_client(settings.log_table))
    now = datetime.now(timezone.utc)
    for age in (700, 300, 10):
        log.write("work.issued", f"{age}s ago", now=now - timedelta(seconds=age))
    log.write("job.queued", "other kind", now=now - timedelta(seconds=5))
    times = log.times("work.issued", since=now - timedelta(seconds=600), now=now)
    expected = [(now - timedelta(seconds=a)).timestamp() for a in (10, 300)]
    assert sorted(times) == pytest.approx(sorted(expected), abs=1e-3)


def test_recent_times_reads_only_what_is_new(settings: Settings,
                                             connection: StorageConnection) -> None:
    ensure_resources(settings, connection)
    log = EventLog(connection.table_service().get_table_client(settings.log_table))
    kind = f"work.issued.{datetime.now().timestamp()}"  # this test's own events
    now = datetime.now(timezone.utc)
    for age in (700, 300, 100):
        log.write(kind, f"{age}s ago", now=now - timedelta(seconds=age))
    recent = RecentTimes(log, kind, window_s=600)
    assert sorted(recent(now.timestamp())) == pytest.approx(
        sorted((now - timedelta(seconds=a)).timestamp() for a in (300, 100)), abs=1e-3)
    log.write(kind, "just now", now=now + timedelta(seconds=1))
    # Written after the first read but dated well before it (beyond the margin for slow
    # clocks): an incremental read does not go back for it, a whole-window read would.
    log.write(kind, "late", now=now - timedelta(seconds=200))
    later = now + timedelta(seconds=2)
    got = recent(later.timestamp())
    assert len(got) == 3 and max(got) == pytest.approx(
        (now + timedelta(seconds=1)).timestamp(), abs=1e-3)
    assert len(log.times(kind, since=later - timedelta(seconds=600), now=later)) == 4
    # The window slides: the 300 s old event leaves it.
    assert len(recent((now + timedelta(seconds=301)).timestamp())) == 2


def test_a_batch_of_events_is_stored_when_its_block_ends(settings: Settings,
                                                         connection: StorageConnection) -> None:
    ensure_resources(settings, connection)
    log = EventLog(connection.table_service().get_table_client(settings.log_table))
    day = datetime(2026, 3, 1, 23, 59, 59, tzinfo=timezone.utc)
    with log.batch() as events:
        events.write("job.queued", "one", job_id="b", now=day)
        events.write("work.issued", "two", job_id="b", now=day + timedelta(microseconds=5))
        events.write("work.issued", "next day", job_id="b", now=day + timedelta(seconds=2))
        assert log.day(day) == []  # nothing stored before the block ends
    assert [e["message"] for e in log.day(day)] == ["two", "one"]
    assert [e["message"] for e in log.day(day + timedelta(seconds=2))] == ["next day"]
    # A failing block still stores what it wrote before failing, and its error is the one seen.
    with pytest.raises(ZeroDivisionError), log.batch() as events:
        events.write("job.queued", "before the failure", now=day - timedelta(hours=1))
        _ = 1 / 0
    assert "before the failure" in [e["message"] for e in log.day(day)]
