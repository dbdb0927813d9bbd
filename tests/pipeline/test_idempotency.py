"""Idempotency keys against Azurite: one winner per key, replays, reuse with another body,
expiry, and keys that are refused before anything is stored."""
import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest

from shared.api import ApiError
from shared.idempotency import (
    IdempotencyStore,
    Replay,
    Reservation,
    body_fingerprint,
    request_key,
    run_idempotent,
)
from shared.paging import decode_token, encode_token, page
from shared.settings import Settings
from shared.storage import StorageConnection, ensure_resources


@pytest.fixture()
def store(settings: Settings, connection: StorageConnection) -> IdempotencyStore:
    ensure_resources(settings, connection)
    return IdempotencyStore(connection.table_service().get_table_client(
        settings.idempotency_table), timedelta(hours=1))


def test_one_of_many_concurrent_requests_owns_a_key(store: IdempotencyStore) -> None:
    fp = body_fingerprint({"blob": "a.json"})

    def attempt(_: int) -> str:
        try:
            got = store.begin("jobs", "k-concurrent", fp)
        except ApiError as exc:
            return exc.code
        return "owner" if isinstance(got, Reservation) else "replay"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(attempt, range(8)))
    assert outcomes.count("owner") == 1
    assert set(outcomes) == {"owner", "RequestInProgress"}


def test_replay_conflict_release_and_expiry(store: IdempotencyStore) -> None:
    started: list[str | None] = []

    async def start(key: str | None) -> tuple[int, dict]:
        started.append(key)
        return 202, {"jobId": f"job-{len(started)}"}

    def submit(body: dict, headers: dict | None = None) -> tuple[int, dict, bool]:
        return asyncio.run(run_idempotent(store, "jobs", headers or {}, body, start))

    first = submit({"blob": "a.json"}, {"idempotency-key": "k1"})
    again = submit({"blob": "a.json", "requestId": "k1"})  # same key sent in the body
    assert first == (202, {"jobId": "job-1"}, False)
    assert again == (202, {"jobId": "job-1"}, True)
    assert started == ["k1"]
    with pytest.raises(ApiError) as reused:
        submit({"blob": "b.json"}, {"Idempotency-Key": "k1"})
    assert (reused.value.status, reused.value.code) == (409, "IdempotencyKeyReused")
    assert submit({"blob": "a.json"})[1] == {"jobId": "job-2"}  # no key: no protection

    async def refuse(key: str | None) -> tuple[int, dict]:
        raise ApiError(404, "NotFound", "no such blob")

    with pytest.raises(ApiError):
        asyncio.run(run_idempotent(store, "jobs", {"Idempotency-Key": "k2"}, {"b": 1}, refuse))
    assert submit({"b": 1}, {"Idempotency-Key": "k2"})[2] is False  # the failure kept nothing

    later = datetime.now(timezone.utc) + timedelta(hours=2)
    assert isinstance(store.begin("jobs", "k1", body_fingerprint({"x": 1}), now=later),
                      Reservation)  # past the retention window the key is free again
    assert isinstance(store.begin("jobs", "k2", body_fingerprint({"b": 1})), Replay)
    assert store.purge_expired(now=later + timedelta(hours=2)) >= 1


@pytest.mark.parametrize("headers,body", [
    ({"Idempotency-Key": "has space"}, {}),
    ({"Idempotency-Key": "a/b"}, {}),
    ({"Idempotency-Key": "x" * 201}, {}),
    ({}, {"requestId": 5}),
    ({"Idempotency-Key": "one"}, {"requestId": "two"}),
])
def test_malformed_keys_are_refused(headers: dict, body: dict) -> None:
    with pytest.raises(ApiError) as exc:
        request_key(headers, body)
    assert exc.value.status == 400 and exc.value.code == "InvalidIdempotencyKey"


def test_keyset_pages_cover_everything_once() -> None:
    items = [(f"2026-01-01T00:00:{i % 7:02d}", f"id{i:02d}") for i in range(23)]
    seen, token = [], None
    while True:
        chunk, token = page(items, lambda x: x, 5, decode_token(token))
        seen.extend(chunk)
        if token is None:
            break
    assert seen == sorted(items, reverse=True)
    for bad in ("!!", encode_token(("a", "b"))[:-3] + "xx", "W10", "eyJhIjoxfQ"):
        with pytest.raises(ApiError) as exc:
            decode_token(bad)
        assert exc.value.code == "InvalidContinuationToken"
