"""The one wall clock of the app and the agent: timezone-aware UTC.

Code that needs "now" takes it as an argument where a test must pin it, and falls back to this.
Orchestrators never call it (replay needs `context.current_utc_datetime`).
"""
from __future__ import annotations

from datetime import datetime, timezone


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
