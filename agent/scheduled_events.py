"""Azure Instance Metadata Service Scheduled Events: the notice a spot VM gets before eviction.

Azure posts a `Preempt` event about 30 s before it evicts a spot VM. The agent polls the
endpoint (`GET .../metadata/scheduledevents?api-version=2020-07-01` with `Metadata: true`),
picks the events that name this VM among their `Resources`, and, once it has handed its work
back, acknowledges the event (`POST` `{"StartRequests": [{"EventId": ...}]}`), which tells
Azure it may go ahead. The endpoint is a setting (`AGENT_SCHEDULED_EVENTS_URL`), so tests
serve the same document on loopback. Document shape: the IMDS "Scheduled Events" docs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import requests

log = logging.getLogger(__name__)

IMDS_URL = "http://169.254.169.254/metadata/scheduledevents?api-version=2020-07-01"
PREEMPT = "Preempt"
# Events that also end the machine's life soon; handled as an eviction: work goes back now.
ENDING = frozenset({PREEMPT, "Terminate"})


@dataclass(frozen=True)
class ScheduledEvent:
    event_id: str
    event_type: str
    resources: tuple[str, ...]
    status: str = ""
    not_before: str = ""

    @classmethod
    def from_json(cls, body: Any) -> ScheduledEvent | None:
        if not isinstance(body, dict) or not isinstance(body.get("EventId"), str):
            return None
        resources = body.get("Resources")
        return cls(event_id=body["EventId"], event_type=str(body.get("EventType", "")),
                   resources=tuple(str(r) for r in resources)
                   if isinstance(resources, list) else (),
                   status=str(body.get("EventStatus", "")),
                   not_before=str(body.get("NotBefore", "")))


class ScheduledEvents:
    """One VM's view of the metadata service's scheduled events."""

    def __init__(self, url: str, vm: str, timeout_seconds: float = 5.0) -> None:
        self.url = url
        self.vm = vm.lower()
        self.timeout = timeout_seconds
        self.session = requests.Session()
        self.session.headers["Metadata"] = "true"
        self.session.trust_env = False  # IMDS must never go through a proxy

    def ending(self) -> ScheduledEvent | None:
        """The first event that ends this VM soon (Preempt, Terminate), or None. A metadata
        service that does not answer is logged and read as no event."""
        try:
            response = self.session.get(self.url, timeout=self.timeout)
            response.raise_for_status()
            document = response.json()
        except (requests.RequestException, ValueError) as exc:
            log.debug("scheduled events not read: %s", exc)
            return None
        events = document.get("Events") if isinstance(document, dict) else None
        for raw in events if isinstance(events, list) else []:
            event = ScheduledEvent.from_json(raw)
            if event is None or event.event_type not in ENDING:
                continue
            if event.resources and self.vm not in (r.lower() for r in event.resources):
                continue
            return event
        return None

    def acknowledge(self, event: ScheduledEvent) -> bool:
        """Tell Azure it may proceed with `event` now."""
        try:
            response = self.session.post(self.url, json={"StartRequests": [
                {"EventId": event.event_id}]}, timeout=self.timeout)
            response.raise_for_status()
            return True
        except requests.RequestException as exc:
            log.warning("scheduled event %s not acknowledged: %s", event.event_id, exc)
            return False

    def close(self) -> None:
        self.session.close()
