"""The app client against the stand-in API: paths, key, retries and refusals."""
from __future__ import annotations

import pytest

from agent.api import ApiRefused, ApiUnavailable, AppClient

KEY = "test-function-key"  # as in conftest.py


def test_paths_are_quoted_and_a_trailing_api_is_accepted(api) -> None:
    client = AppClient(api.url + "/api/", "vm01", KEY, retry_seconds=5)
    client.idle(12)
    client.done("job:1@x", {"step": 0})
    assert [(c.path, c.key, c.body) for c in api.calls] == [
        ("/api/vms/vm01/idle", KEY, {"idleSeconds": 12}),
        ("/api/vms/vm01/jobs/job%3A1%40x/done", KEY, {"step": 0})]


def test_transient_failures_are_retried_then_given_up(api) -> None:
    client = AppClient(api.url, "vm01", KEY, retry_seconds=5)
    api.fail_next("done", 500, 502, 503)
    assert client.done("j", {}) == {"ok": True}
    assert len(api.done_calls()) == 4
    api.fail_next("done", *([503] * 100))
    quick = AppClient(api.url, "vm01", KEY, retry_seconds=0.5)
    with pytest.raises(ApiUnavailable):
        quick.done("j", {})
    tries = len(api.done_calls()) - 4
    assert 2 <= tries < 100  # retried, and stopped once the budget was spent


def test_no_answer_is_transient() -> None:
    client = AppClient("http://127.0.0.1:9", "vm01", KEY, retry_seconds=0.3)
    with pytest.raises(ApiUnavailable):
        client.idle(1)


@pytest.mark.parametrize(("status", "spent"), [(404, True), (409, True), (410, True),
                                               (400, False), (403, False)])
def test_refusals_are_not_retried(api, status: int, spent: bool) -> None:
    client = AppClient(api.url, "vm01", KEY, retry_seconds=5)
    api.fail_next("done", status)
    with pytest.raises(ApiRefused) as err:
        client.done("j", {})
    assert err.value.status == status and err.value.spent is spent
    assert len(api.done_calls()) == 1


def test_wrong_key_is_refused(api) -> None:
    with pytest.raises(ApiRefused) as err:
        AppClient(api.url, "vm01", "wrong", retry_seconds=5).idle(1)
    assert err.value.status == 401 and not err.value.spent


def test_empty_key_sends_no_header(api) -> None:
    with pytest.raises(ApiRefused):
        AppClient(api.url, "vm01", "", retry_seconds=5).idle(1)
    assert api.calls[-1].key is None
