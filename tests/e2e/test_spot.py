"""A spot VM evicted mid-file, through devhost, on Azurite, with the local pool.

The agents watch a fake of the instance metadata service's Scheduled Events endpoint (same
document shape, `Metadata: true` required, `StartRequests` acknowledgements recorded). When a
Preempt notice names the spot VM working on a file, its agent stops the action, hands the file
back (claim released, message visible again), tells the app and acknowledges the event; an
on-demand VM finishes the file well inside the 30 s notice, exactly once, and the spot VM reads
`evicted` in GET /api/pool.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest


class FakeImds:
    """Scheduled Events on loopback; `preempt(vm)` publishes a Preempt notice 30 s ahead."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.acknowledged: list[str] = []
        self.incarnation = 1
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        port = self.server.server_address[1]
        return f"http://127.0.0.1:{port}/metadata/scheduledevents?api-version=2020-07-01"

    def preempt(self, vm: str, notice_s: float = 30.0) -> str:
        event_id = str(uuid.uuid4()).upper()
        with self.lock:
            self.events.append({
                "EventId": event_id, "EventType": "Preempt", "ResourceType": "VirtualMachine",
                "Resources": [vm], "EventStatus": "Scheduled",
                "NotBefore": formatdate(time.time() + notice_s, usegmt=True),
                "Description": "", "EventSource": "Platform", "DurationInSeconds": -1})
            self.incarnation += 1
        return event_id

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        imds = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _checked(self) -> bool:
                if self.headers.get("Metadata") != "true" or not self.path.startswith(
                        "/metadata/scheduledevents"):
                    self._send(400, {"error": "Bad request. Required metadata header not "
                                              "specified"})
                    return False
                return True

            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                if self._checked():
                    with imds.lock:
                        self._send(200, {"DocumentIncarnation": imds.incarnation,
                                         "Events": list(imds.events)})

            def do_POST(self) -> None:  # noqa: N802
                if not self._checked():
                    return
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                    ids = [r["EventId"] for r in body["StartRequests"]]
                except (ValueError, KeyError, TypeError):
                    self._send(400, {"error": "bad StartRequests"})
                    return
                with imds.lock:
                    imds.acknowledged.extend(ids)
                    imds.events = [e for e in imds.events if e["EventId"] not in ids]
                    imds.incarnation += 1
                self._send(200)

        return Handler


@pytest.fixture()
def imds() -> Iterator[FakeImds]:
    fake = FakeImds()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def _executions(count_dir: Path, body: bytes) -> int:
    digest = hashlib.sha1(body).hexdigest()[:16]
    return len(list(count_dir.glob(f"process-{digest}-*")))


def test_an_evicted_spot_vm_hands_its_file_to_an_on_demand_vm_within_the_notice(
        start_app, imds: FakeImds, tmp_path: Path) -> None:
    counts = tmp_path / "counts"
    counts.mkdir()
    app = start_app(POOL_VMS="vm01", POOL_SPOT_VMS="spot01", POOL_MAX_RUNNING="2",
                    E2E_COUNT_DIR=str(counts), E2E_SLOW_SECONDS="20",
                    AGENT_SCHEDULED_EVENTS_URL=imds.url, AGENT_SCHEDULED_EVENTS_SECONDS="1",
                    AGENT_CLAIM_STALE_SECONDS="120", HEARTBEAT_TIMEOUT_SECONDS="120",
                    VM_PRICES="default=3.6,default:spot=0.72")
    body = b'{"slow": true, "file": "spot"}'
    app.upload("spot.json", body)
    # The policy starts the spot member first; its agent claims the file.
    claim = app.wait_for("a claim", app.services.claims.active, timeout=90)[0]
    assert claim.vm == "spot01"
    event_id = imds.preempt("spot01")
    noticed = time.monotonic()

    def taken_over() -> bool:
        current = app.services.claims.get(claim.job_id, claim.step_key)
        return current is not None and current.vm == "vm01"

    app.wait_for("another VM to take the file over", taken_over, timeout=60, every=0.2)
    took = time.monotonic() - noticed
    # Within the 30 s notice, not after the 120 s stale-claim timeout.
    assert took < 30, took
    job = app.wait_for("the job to finish", lambda: [
        j for j in app.jobs() if j["status"] in ("succeeded", "failed")], timeout=90)[0]
    assert job["status"] == "succeeded" and job["vm"] == "vm01"
    assert _executions(counts, body) == 1  # the action on spot01 was stopped, not completed
    assert app.blob_names(app.services.settings.results_container) == ["spot.json.process.out"]
    pool = {vm["name"]: vm for vm in app.pool()["vms"]}
    assert pool["spot01"]["state"] == "evicted" and pool["spot01"]["priority"] == "spot"
    assert pool["vm01"]["priority"] == "regular"
    app.wait_for("the acknowledgement", lambda: event_id in imds.acknowledged, timeout=30)
    # The handed-back attempt is not a failure: still the first attempt, taken over.
    assert job["attempts"] == 1, job
    events = app.services.log.day(kind="vm.evicted", limit=100)
    assert [e["vm"] for e in events] == ["spot01"]
    # Cost per priority: both members were billed, each at its own price.
    by_priority = app.pool()["costByPriority"]
    assert set(by_priority) == {"regular", "spot"}
    for priority, hourly in (("regular", 3.6), ("spot", 0.72)):
        split = by_priority[priority]
        assert split["billedVmSeconds"] > 0
        assert abs(split["money"] - split["billedVmSeconds"] * hourly / 3600) < 1e-4
    report = app.get("/api/cost").json()
    assert set(report["byPriority"]) == {"regular", "spot"}
