"""Work items (format, HMAC token) and step claims against Azurite."""
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from shared.claims import (
    ABANDONED,
    DONE,
    AlreadyClaimed,
    AlreadyFinished,
    ClaimLost,
    ClaimStore,
    utcnow,
)
from shared.settings import Settings
from shared.storage import StorageConnection, ensure_resources
from shared.workitem import WorkItem, WorkItemError, verify

ITEM = WorkItem(job_id="job-1", instance_id="pf-abc", step=0, action="process",
                blob="data/x.json", attempt=1)


def test_round_trip_and_token() -> None:
    signed = ITEM.signed("k")
    assert WorkItem.from_json(signed.to_json()) == signed
    assert verify(ITEM, signed.token, "k")
    assert not verify(ITEM, signed.token, "other-key")
    forged = WorkItem(**{**ITEM.__dict__, "attempt": 2})
    assert not verify(forged, signed.token, "k")
    assert not verify(ITEM, "", "k")


@pytest.mark.parametrize(("text", "fragment"), [
    ("{not json", "not JSON"),
    ("[]", "JSON object"),
    ('{"jobId": "a"}', "lacks field"),
    ('{"jobId": "a/../b", "instanceId": "i", "step": 0, "action": "p", "blob": "d/x",'
     ' "attempt": 1}', "job_id"),
    ('{"jobId": "a", "instanceId": "i", "step": "0", "action": "p", "blob": "d/x",'
     ' "attempt": 1}', "step"),
    ('{"jobId": "a", "instanceId": "i", "step": 0, "action": "rm -rf", "blob": "d/x",'
     ' "attempt": 1}', "action"),
    ('{"jobId": "a", "instanceId": "i", "step": 0, "action": "p", "blob": "nocontainer",'
     ' "attempt": 1}', "blob"),
])
def test_malformed_work_items_are_refused(text: str, fragment: str) -> None:
    with pytest.raises(WorkItemError) as err:
        WorkItem.from_json(text)
    assert fragment in str(err.value)


@pytest.fixture()
def claims(settings: Settings, connection: StorageConnection) -> ClaimStore:
    ensure_resources(settings, connection)
    table = connection.table_service().get_table_client(settings.claim_table)
    return ClaimStore(table, stale_after=timedelta(seconds=60))


def test_only_one_vm_wins_a_claim(claims: ClaimStore) -> None:
    def attempt(vm: str) -> str:
        try:
            claims.claim(ITEM, vm)
            return vm
        except AlreadyClaimed:
            return ""

    with ThreadPoolExecutor(10) as pool:
        winners = [w for w in pool.map(attempt, [f"vm{i:02d}" for i in range(10)]) if w]
    assert len(winners) == 1
    assert claims.get(ITEM.job_id, ITEM.step_key).vm == winners[0]
    # the holder may claim again (a redelivered message) without error
    assert claims.claim(ITEM, winners[0]).vm == winners[0]


def test_stale_claim_is_taken_over_and_old_holder_loses_it(claims: ClaimStore) -> None:
    past = utcnow() - timedelta(minutes=10)
    claims.claim(ITEM, "vm01", now=past)
    taken = claims.claim(ITEM, "vm02")
    assert taken.vm == "vm02"
    with pytest.raises(ClaimLost):
        claims.heartbeat(ITEM, "vm01")
    with pytest.raises(ClaimLost):
        claims.finish(ITEM.job_id, ITEM.step_key, "vm01", DONE)
    claims.heartbeat(ITEM, "vm02")


def test_finish_is_idempotent_and_final(claims: ClaimStore) -> None:
    claims.claim(ITEM, "vm01")
    first = claims.finish(ITEM.job_id, ITEM.step_key, "vm01", DONE, {"exitCode": 0})
    again = claims.finish(ITEM.job_id, ITEM.step_key, "vm01", DONE, {"exitCode": 0})
    assert first.state == again.state == DONE and again.outcome["exitCode"] == 0
    with pytest.raises(AlreadyFinished):
        claims.claim(ITEM, "vm02")
    assert claims.active() == []


def test_abandon_stale_marks_only_silent_holders(claims: ClaimStore) -> None:
    fresh = WorkItem(**{**ITEM.__dict__, "job_id": "job-2"})
    claims.claim(ITEM, "vm01", now=utcnow() - timedelta(minutes=10))
    claims.claim(fresh, "vm02")
    abandoned = claims.abandon_stale()
    assert [c.job_id for c in abandoned] == ["job-1"]
    assert claims.get("job-1", ITEM.step_key).state == ABANDONED
    assert [c.job_id for c in claims.active()] == ["job-2"]
    # the abandoned attempt is open to the next agent that receives its message
    assert claims.claim(ITEM, "vm03").vm == "vm03"


def test_a_withdrawn_attempt_stops_its_holder_and_is_never_claimed_again(
        claims: ClaimStore) -> None:
    from shared.claims import WITHDRAWN, ClaimWithdrawn  # noqa: PLC0415

    claims.claim(ITEM, "vm01")
    assert claims.withdraw(ITEM.job_id, ITEM.step_key) == "claimed"
    with pytest.raises(ClaimWithdrawn):
        claims.heartbeat(ITEM, "vm01")
    stale = utcnow() + timedelta(hours=1)  # not even a stale takeover revives it
    with pytest.raises(AlreadyFinished):
        claims.claim(ITEM, "vm02", now=stale)
    assert claims.active() == [] and (ITEM.job_id, ITEM.step_key) in claims.withdrawn()
    unclaimed = WorkItem(**{**ITEM.__dict__, "attempt": 2})
    assert claims.withdraw(unclaimed.job_id, unclaimed.step_key) == ""
    with pytest.raises(AlreadyFinished):
        claims.claim(unclaimed, "vm01")
    done = WorkItem(**{**ITEM.__dict__, "attempt": 3})
    claims.claim(done, "vm01")
    claims.finish(done.job_id, done.step_key, "vm01", DONE)
    assert claims.withdraw(done.job_id, done.step_key) == DONE  # finished work stays finished
    assert claims.get(done.job_id, done.step_key).state == DONE
    assert claims.get(ITEM.job_id, ITEM.step_key).state == WITHDRAWN


def test_claim_and_finish_return_what_they_stored_without_reading_it_back(
        claims: ClaimStore) -> None:
    mine = claims.claim(ITEM, "vm01")
    stored = claims.get(ITEM.job_id, ITEM.step_key)
    assert stored is not None and (mine.vm, mine.state, mine.etag) == (
        stored.vm, stored.state, stored.etag)
    taken = claims.claim(ITEM, "vm02", now=utcnow() + timedelta(minutes=10))  # a takeover
    stored = claims.get(ITEM.job_id, ITEM.step_key)
    assert stored is not None and (taken.vm, taken.etag) == ("vm02", stored.etag)
    done = claims.finish(ITEM.job_id, ITEM.step_key, "vm02", DONE, {"exitCode": 0})
    stored = claims.get(ITEM.job_id, ITEM.step_key)
    assert stored is not None and (done.state, done.etag, done.outcome["exitCode"]) == (
        stored.state, stored.etag, stored.outcome["exitCode"])


def test_the_holders_last_write_guards_heartbeat_and_finish_without_a_read(
        claims: ClaimStore) -> None:
    from shared.claims import ClaimLost, ClaimWithdrawn  # noqa: PLC0415

    mine = claims.claim(ITEM, "vm01")
    beat = claims.heartbeat(ITEM, "vm01", known=mine)
    stored = claims.get(ITEM.job_id, ITEM.step_key)
    assert stored is not None and beat.etag == stored.etag and beat.etag != mine.etag
    assert stored.heartbeat_at == beat.heartbeat_at
    # A stale copy (the row moved on since) is read again, and what it says decides.
    beat = claims.heartbeat(ITEM, "vm01", known=mine)
    done = claims.finish(ITEM.job_id, ITEM.step_key, "vm01", DONE, {"exitCode": 0}, known=mine)
    assert claims.get(ITEM.job_id, ITEM.step_key).etag == done.etag and done.state == DONE
    other = WorkItem(**{**ITEM.__dict__, "attempt": 2})
    held = claims.claim(other, "vm01")
    taken = claims.claim(other, "vm02", now=utcnow() + timedelta(minutes=10))  # a takeover
    with pytest.raises(ClaimLost):
        claims.heartbeat(other, "vm01", known=held)
    with pytest.raises(ClaimLost):
        claims.finish(other.job_id, other.step_key, "vm01", DONE, known=held)
    assert claims.get(other.job_id, other.step_key).etag == taken.etag  # nothing written
    third = WorkItem(**{**ITEM.__dict__, "attempt": 3})
    held = claims.claim(third, "vm01")
    claims.withdraw(third.job_id, third.step_key)
    with pytest.raises(ClaimWithdrawn):
        claims.heartbeat(third, "vm01", known=held)
