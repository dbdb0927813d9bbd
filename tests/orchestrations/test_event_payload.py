"""External event data as the orchestrators read it: decoded by the SDK, or still JSON text."""
from __future__ import annotations

import json

import pytest

from shared.orchestrations import event_payload

REPORT = {"status": "succeeded", "vm": "vm01", "exitCode": 0}


@pytest.mark.parametrize(("raw", "expected"), [
    (REPORT, REPORT),                      # the SDK decoded the event's JSON
    (json.dumps(REPORT), REPORT),          # the event's body was JSON text
    ("not json", {}), ("[1, 2]", {}), (None, {}), (533, {}), ('"533"', {}),
])
def test_event_payload_is_an_object_or_empty(raw: object, expected: dict) -> None:
    assert event_payload(raw) == expected
