"""The agent's reading of Scheduled Events documents (shapes from the IMDS docs)."""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from agent.scheduled_events import ScheduledEvent, ScheduledEvents


class _Imds:
    def __init__(self) -> None:
        self.document: Any = {"DocumentIncarnation": 1, "Events": []}
        self.posts: list[Any] = []
        self.headers: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                outer.headers.append(self.headers.get("Metadata"))
                body = outer.document if isinstance(outer.document, bytes) else json.dumps(
                    outer.document).encode()
                self._answer(200, body)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                outer.posts.append(json.loads(self.rfile.read(length)))
                self._answer(200, b"")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metadata/scheduledevents"


@pytest.fixture()
def imds() -> Iterator[_Imds]:
    fake = _Imds()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def _event(event_type: str, resources: list[str], event_id: str = "A-1") -> dict[str, Any]:
    return {"EventId": event_id, "EventType": event_type, "ResourceType": "VirtualMachine",
            "Resources": resources, "EventStatus": "Scheduled",
            "NotBefore": "Mon, 19 Sep 2016 18:29:47 GMT"}


def test_a_preempt_for_this_vm_is_seen_with_the_metadata_header(imds: _Imds) -> None:
    imds.document["Events"] = [_event("Freeze", ["spot01"], "F"),
                               _event("Preempt", ["other"], "O"),
                               _event("Preempt", ["SPOT01"], "P")]
    event = ScheduledEvents(imds.url, "spot01").ending()
    assert event == ScheduledEvent("P", "Preempt", ("SPOT01",), "Scheduled",
                                   "Mon, 19 Sep 2016 18:29:47 GMT")
    assert imds.headers == ["true"]


def test_no_event_or_a_broken_document_reads_as_nothing(imds: _Imds) -> None:
    events = ScheduledEvents(imds.url, "spot01")
    assert events.ending() is None
    imds.document = b"not json"
    assert events.ending() is None
    imds.document = {"Events": [{"EventType": "Preempt"}, "junk"]}
    assert events.ending() is None
    assert ScheduledEvents("http://127.0.0.1:9/none", "spot01", 0.5).ending() is None


def test_acknowledging_posts_start_requests(imds: _Imds) -> None:
    events = ScheduledEvents(imds.url, "spot01")
    assert events.acknowledge(ScheduledEvent("P-2", "Preempt", ("spot01",)))
    assert imds.posts == [{"StartRequests": [{"EventId": "P-2"}]}]
