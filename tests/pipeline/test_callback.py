"""The done/idle callbacks refuse everything but a genuine report, and change nothing then."""
import json

import pytest

from shared.api import ApiError
from shared.callback import acknowledge, caller_address, check_done, check_idle, withdraw
from shared.pipeline import issue_work_item, start_job
from shared.pool.registry import VmState
from shared.services import Services
from shared.settings import Settings
from shared.storage import StorageConnection, ensure_resources
from shared.workitem import WorkItem


@pytest.fixture()
def services(settings: Settings, connection: StorageConnection) -> Services:
    ensure_resources(settings, connection)
    svc = Services(settings, connection)
    svc.registry.ensure_members(["vm01", "vm02"], slots=1)
    svc.registry.transition("vm01", VmState.RUNNING, [VmState.DEALLOCATED],
                            private_ip="10.0.0.4")
    start_job(svc, {"jobId": "job-1", "instanceId": "job-1", "container": "data",
                    "blob": "x.json", "actions": ["process"]})
    issue_work_item(svc, {"jobId": "job-1", "instanceId": "job-1", "step": 0,
                          "action": "process", "blob": "data/x.json", "attempt": 1})
    return svc


def _item(svc: Services) -> WorkItem:
    raw = svc.work_queue.receive_message()
    return WorkItem.from_json(raw.content)


RESULTS = "{results}"


def _body(token: str, **extra: object) -> bytes:
    return json.dumps({"step": 0, "attempt": 1, "token": token, "status": "succeeded",
                       "output": f"{RESULTS}/x.json.process.out", "bytesIn": 5, "bytesOut": 7,
                       **extra}).encode()


def check(services: Services, vm: str, job: str, body: bytes, headers: dict[str, str]):
    """check_done with the test's own results container filled in."""
    body = body.replace(RESULTS.encode(), services.settings.results_container.encode())
    return check_done(services, vm, job, body, headers)


def test_genuine_report_is_accepted_once(services: Services) -> None:
    item = _item(services)
    services.claims.claim(item, "vm01")
    event = check(services, "vm01", "job-1", _body(item.token), {})
    assert (event.instance_id, event.event_name, event.repeat) == ("job-1", "done-0-1", False)
    assert event.payload["bytesOut"] == 7 and event.payload["vm"] == "vm01"
    assert acknowledge(services, event, "vm01")
    again = check(services, "vm01", "job-1", _body(item.token), {})
    assert acknowledge(services, again, "vm01") is None  # a repeat: nothing to raise


def _full_body(item: WorkItem, token: str | None = None, **extra: object) -> bytes:
    """A report from an agent that restates the work item (instance, action, blob)."""
    fields = {"instanceId": item.instance_id, "action": item.action, "blob": item.blob}
    return _body(token or item.token, **{**fields, **extra})


def test_a_report_restating_its_item_is_proven_by_the_token_alone(
        services: Services, settings: Settings, proxy) -> None:
    item = _item(services)
    services.claims.claim(item, "vm01")
    proxied = Services(settings, StorageConnection("AzureWebJobsStorage",
                                                   connection_string=proxy.connection_string))
    proxy.clear()
    event = check(proxied, "vm01", "job-1", _full_body(item), {})
    reads = [s.path.rsplit("/", 1)[-1] for s in proxy.requests() if s.method == "GET"]
    assert reads == [f"{settings.claim_table}(PartitionKey='job-1',RowKey='000-001')"]
    assert (event.instance_id, event.event_name, event.repeat) == ("job-1", "done-0-1", False)
    assert acknowledge(services, event, "vm01") and acknowledge(services, event, "vm01") is None
    # Restated fields the token was not issued for: read the item, and the token decides.
    with pytest.raises(ApiError) as err:
        check(services, "vm01", "job-1", _full_body(item, "0" * 64), {})
    assert err.value.code == "InvalidToken"
    moved = check(services, "vm01", "job-1", _full_body(item, blob="data/other.json"), {})
    assert moved.instance_id == "job-1"  # the issued item's own fields, proven by its token
    # Fields no work item could hold (a bad id, blob or action): the issued item is read and
    # the token decides; a token no key made (non-ASCII too) is refused, never a crash.
    for odd in ({"blob": "no-container"}, {"instanceId": "not an id"}, {"action": "a b"}):
        assert check(services, "vm01", "job-1", _full_body(item, **odd), {}).instance_id == \
            "job-1"
        with pytest.raises(ApiError) as err:
            check(services, "vm01", "job-1", _full_body(item, "0" * 64, **odd), {})
        assert err.value.code == "InvalidToken"
    for token in ("tökén", "0" * 63 + "é"):
        with pytest.raises(ApiError) as err:
            check(services, "vm01", "job-1", _full_body(item, token), {})
        assert err.value.code == "InvalidToken"


def test_only_one_of_two_racing_reports_may_raise_and_a_withdrawn_one_may_again(
        services: Services) -> None:
    item = _item(services)
    services.claims.claim(item, "vm01")
    first = check(services, "vm01", "job-1", _body(item.token), {})
    second = check(services, "vm01", "job-1", _body(item.token), {})  # read before either acks
    assert not first.repeat and not second.repeat
    etag = acknowledge(services, first, "vm01")
    assert etag and acknowledge(services, second, "vm01") is None  # the insert refuses it
    withdraw(services, first, etag)  # raising failed: a retry must be able to raise
    retry = check(services, "vm01", "job-1", _body(item.token), {})
    assert retry.repeat is False and acknowledge(services, retry, "vm01")


@pytest.mark.parametrize(("vm", "job", "body", "status", "code"), [
    ("vm09", "job-1", None, 403, "NotClaimed"),          # a non-member without the claim
    ("vm09", "job-1", _body("0" * 64), 403, "InvalidToken"),  # a non-member, forged
    ("vm/../x", "job-1", None, 400, "BadRequest"),       # no worker has such a name
    ("vm01", "job-x", None, 404, "NotFound"),            # unknown job
    ("vm01", "job-1", _body("0" * 64), 403, "InvalidToken"),  # forged token
    ("vm02", "job-1", None, 403, "NotClaimed"),          # another VM holds the claim
    ("vm01", "job-1", b"{bad", 400, "InvalidJson"),
    ("vm01", "job-1", b"[1]", 400, "BadRequest"),
    ("vm01", "job-1", b"{" + b" " * 2_000_000 + b"}", 413, "PayloadTooLarge"),
])
def test_bad_reports_are_refused(services: Services, vm: str, job: str, body: bytes | None,
                                 status: int, code: str) -> None:
    item = _item(services)
    services.claims.claim(item, "vm01")
    with pytest.raises(ApiError) as err:
        check(services, vm, job, body if body is not None else _body(item.token), {})
    assert (err.value.status, err.value.code) == (status, code)
    # nothing changed: the attempt is not acknowledged
    assert services.issued.get("job-1", 0, 1)[1] is False
    assert list(services.issued.table.query_entities("RowKey eq 'ack-000-001'")) == []


def test_worker_outside_the_pool_is_proven_by_token_and_claim(services: Services,
                                                             storage_env: dict[str, str]) -> None:
    """A Kubernetes pod has no pool row: the token and the claim it holds are its proof."""
    item = _item(services)
    services.claims.claim(item, "vmpool-agent-7xk2p-abcde")
    event = check(services, "vmpool-agent-7xk2p-abcde", "job-1", _body(item.token), {})
    assert event.repeat is False and event.payload["vm"] == "vmpool-agent-7xk2p-abcde"
    with pytest.raises(ApiError) as err:  # idle asks the scaler to stop a machine: members only
        check_idle(services, "vmpool-agent-7xk2p-abcde", b"{}", {})
    assert err.value.status == 404
    strict = Services(Settings.from_env({**storage_env, "CHECK_CALLER_IP": "true"}),
                      services.connection)
    with pytest.raises(ApiError) as err:  # no address is known for a non-member
        check(strict, "vmpool-agent-7xk2p-abcde", "job-1", _body(item.token),
              {"client-ip": "10.0.0.9:1"})
    assert err.value.code == "AddressMismatch"


def test_attempt_never_issued_and_bad_output(services: Services) -> None:
    item = _item(services)
    services.claims.claim(item, "vm01")
    with pytest.raises(ApiError) as err:
        check(services, "vm01", "job-1", _body(item.token, attempt=2), {})
    assert err.value.status == 404
    with pytest.raises(ApiError) as err:
        check(services, "vm01", "job-1",
                   _body(item.token, output="data/../../etc/passwd"), {})
    assert err.value.status == 400


def test_caller_address_check(services: Services, storage_env: dict[str, str]) -> None:
    strict = Services(Settings.from_env({**storage_env, "CHECK_CALLER_IP": "true"}),
                      services.connection)
    item = _item(services)
    strict.claims.claim(item, "vm01")
    assert check(strict, "vm01", "job-1", _body(item.token),
                      {"client-ip": "10.0.0.4:50123"}).repeat is False
    with pytest.raises(ApiError) as err:
        check(strict, "vm01", "job-1", _body(item.token), {"client-ip": "10.9.9.9:1"})
    assert err.value.code == "AddressMismatch"
    assert check_idle(strict, "vm01", b'{"idleSeconds": 30}', {"x-forwarded-for": "10.0.0.4"})\
        == 30


def test_caller_address_parsing() -> None:
    assert caller_address({"client-ip": "10.0.0.4:1234"}) == "10.0.0.4"
    assert caller_address({"Client-IP": "[::1]:80"}) == "::1"
    assert caller_address({"X-Forwarded-For": "1.2.3.4, 5.6.7.8"}) == "1.2.3.4"
    assert caller_address({"client-ip": "nonsense"}) is None
    assert caller_address({}) is None
