"""Coalescing of repeated requests for the same work into few runs of it (no I/O here)."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class PassCoalescer:
    """Many requests, one pass: a process's event-driven scaler passes, coalesced.

    Every file asks for a pass twice (work issued, job finished); each pass reads the pool,
    the queue, the claims and the arrivals, so one per request made the passes most of the
    storage traffic of a busy app. A request while a pass runs, or within `min_interval_s` of
    the last one, only marks a pass as wanted; one more pass then runs (on a timer thread) once
    the interval is over. Every request is therefore followed by a pass that starts after it,
    and the process runs at most one pass per interval however many requests arrive.
    """

    def __init__(self, run: Callable[[str], Any], min_interval_s: float) -> None:
        self._run = run
        self.min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._running = False
        self._wanted: str | None = None  # the reason of the latest request not yet served
        self._timer: threading.Timer | None = None
        self._last_end = float("-inf")
        self.passes = 0

    def request(self, reason: str, run: Callable[[str], Any] | None = None,
                background: bool = False) -> bool:
        """Ask for a pass; True when this call ran it (with `run`, when given, so the caller
        gets its report), False when it was coalesced into a pass to come. With `background`
        the pass never runs in the caller: an activity that only pokes the scaler returns at
        once and its pass runs on a timer thread."""
        with self._lock:
            if self._running or self._timer is not None:
                self._wanted = reason
                return False
            wait = self._last_end + self.min_interval_s - time.monotonic()
            if wait > 0 or background:
                self._wanted = reason
                self._schedule(max(wait, 0.0))
                return False
            self._running = True
        self._serve(reason, run)
        return True

    def _schedule(self, wait: float) -> None:
        self._timer = threading.Timer(wait, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            self._timer = None
            if self._running or self._wanted is None:
                return
            reason, self._wanted, self._running = self._wanted, None, True
        self._serve(reason)

    def _serve(self, reason: str, run: Callable[[str], Any] | None = None) -> None:
        try:
            (run or self._run)(reason)
        except Exception:  # noqa: BLE001 - a failed pass only delays capacity (timer backstop)
            log.exception("scaler pass (%s) failed", reason)
        finally:
            with self._lock:
                self.passes += 1
                self._running = False
                self._last_end = time.monotonic()
                if self._wanted is not None and self._timer is None:
                    self._schedule(self.min_interval_s)
