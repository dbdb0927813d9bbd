"""Calls to the app: the done callback and the idle request.

2xx is an acknowledgement (a repeat is acknowledged too, so retrying is harmless); 5xx and
connection errors are retried with exponential backoff and jitter for a bounded time; 4xx is a
refusal that retrying cannot change. 404/409/410 mean the app no longer waits for this step
(unknown or finished), so the work item is spent.
"""
from __future__ import annotations

import logging
import threading
from typing import Any
from urllib.parse import quote

import requests
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

log = logging.getLogger(__name__)
SPENT_STATUSES = (404, 409, 410)


class ApiError(Exception):
    """Base of failed calls to the app."""


class TransientApiError(ApiError):
    """5xx or no answer: worth another try."""


class ApiUnavailable(ApiError):
    """The app did not answer successfully within the retry budget."""


class ApiRefused(ApiError):
    """The app answered 4xx; `spent` when it says the step is unknown or finished."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"app refused with {status}: {detail}")
        self.status = status
        self.detail = detail

    @property
    def spent(self) -> bool:
        return self.status in SPENT_STATUSES


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.warning("app call failed (%s), attempt %d; retrying", exc, state.attempt_number)


class AppClient:
    """Posts to `{base}/api/vms/{vm}/...` with the function key."""

    def __init__(self, base_url: str, vm: str, key: str, retry_seconds: float = 300.0,
                 timeout_seconds: float = 30.0, max_wait_seconds: float = 30.0) -> None:
        root = base_url.rstrip("/")
        root = root[: -len("/api")] if root.endswith("/api") else root  # accept ".../api" too
        self.base = f"{root}/api/vms/{quote(vm, safe='')}"
        self.retry_seconds = retry_seconds
        self.timeout = (min(10.0, timeout_seconds), timeout_seconds)
        self.max_wait = max_wait_seconds
        self.key = key
        self._local = threading.local()  # one session per thread: Session is not thread-safe

    @property
    def session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            if self.key:
                session.headers.update({"x-functions-key": self.key})
            self._local.session = session
        return session

    def done(self, job_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Report a finished step; returns the app's JSON answer (or {})."""
        return self._post(f"/jobs/{quote(job_id, safe='')}/done", body, self.retry_seconds)

    def idle(self, idle_seconds: int) -> dict[str, Any]:
        """Tell the app this VM has nothing to do (one short retry window)."""
        return self._post("/idle", {"idleSeconds": idle_seconds},
                          min(self.retry_seconds, 10.0))

    def evicted(self, event_id: str) -> dict[str, Any]:
        """Tell the app Azure is evicting this VM (a short retry window: the notice is short)."""
        return self._post("/evicted", {"eventId": event_id}, min(self.retry_seconds, 10.0))

    def _post(self, path: str, body: dict[str, Any], budget: float) -> dict[str, Any]:
        retrying = Retrying(
            retry=retry_if_exception_type(TransientApiError),
            stop=stop_after_delay(budget),
            wait=wait_exponential_jitter(multiplier=0.2, max=self.max_wait),
            before_sleep=_log_retry, reraise=True)
        try:
            return retrying(self._post_once, path, body)
        except TransientApiError as exc:
            raise ApiUnavailable(f"{path}: {exc}") from None

    def _post_once(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self.session.post(self.base + path, json=body, timeout=self.timeout)
        except requests.RequestException as exc:
            raise TransientApiError(f"no answer: {exc.__class__.__name__}") from None
        if response.status_code >= 500:
            raise TransientApiError(f"status {response.status_code}")
        if response.status_code >= 400:
            raise ApiRefused(response.status_code, response.text[:500])
        try:
            answer = response.json()
        except ValueError:
            return {}
        return answer if isinstance(answer, dict) else {}

    def close(self) -> None:
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
