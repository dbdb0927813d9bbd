"""Waiting for something to become true, for tests and benchmarks: one bounded poll loop.

Each caller decides what a timeout means (a failed test with the host's output, an error in
a benchmark); the bound only guards against hangs, never measures speed.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll(check: Callable[[], T], timeout: float, every: float = 0.05) -> T | None:
    """`check()`'s first truthy value within `timeout` seconds, else None."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() >= deadline:
            return value or None
        time.sleep(every)
