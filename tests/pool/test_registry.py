"""The pool table on Azurite: membership, transitions, slot claims under contention, ETags."""
from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest

from shared.pool.registry import (
    InvalidAddress,
    InvalidTransition,
    NotRemovable,
    OwnRow,
    PoolRegistry,
    UnknownVm,
    VmBusy,
    VmState,
)
from shared.settings import Settings
from shared.storage import StorageConnection
from tools.storage_proxy import StorageProxy

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def _running(registry: PoolRegistry, *names: str, slots: int = 1) -> None:
    registry.ensure_members(names, slots)
    for name in names:
        registry.transition(name, VmState.RUNNING, [VmState.DEALLOCATED])


def test_ensure_members_is_idempotent_and_follows_slots(registry: PoolRegistry) -> None:
    assert registry.ensure_members(["vm01", "vm02"], 2, {"vm01": "/sub/x/vm01"}) == [
        "vm01", "vm02"]
    assert registry.ensure_members(["vm01", "vm02", "vm03"], 2) == ["vm03"]
    rows = registry.list()
    assert [r.name for r in rows] == ["vm01", "vm02", "vm03"]
    assert all(r.state == VmState.DEALLOCATED and r.busy == 0 and r.slots == 2 for r in rows)
    assert registry.get("vm01").backend_id == "/sub/x/vm01"
    assert registry.get("vm02").backend_id == "vm02"
    # a changed slot count reaches existing rows without touching their state
    registry.transition("vm01", VmState.RUNNING, [VmState.DEALLOCATED])
    assert registry.ensure_members(["vm01"], 4) == []
    rec = registry.get("vm01")
    assert (rec.slots, rec.state, rec.backend_id) == (4, VmState.RUNNING, "/sub/x/vm01")


def test_bad_member_names_change_nothing(registry: PoolRegistry) -> None:
    with pytest.raises(ValueError, match="not a valid VM name"):
        registry.ensure_members(["vm01", "../etc"], 1)
    with pytest.raises(ValueError, match="slots"):
        registry.ensure_members(["vm01"], 0)
    assert registry.list() == []


def test_unknown_and_hostile_names_raise_unknown_vm(registry: PoolRegistry) -> None:
    registry.ensure_members(["vm01"], 1)
    for name in ("vm02", "vm01' or '1' eq '1", "", "a/b"):
        with pytest.raises(UnknownVm) as err:
            registry.get(name)
        assert "not a member of the pool" in str(err.value)
        assert isinstance(err.value, KeyError)
    with pytest.raises(UnknownVm, match="'ghost'"):
        registry.claim_slot("ghost")
    with pytest.raises(UnknownVm):
        registry.heartbeat("ghost")
    with pytest.raises(UnknownVm):
        registry.transition("ghost", VmState.RUNNING, [VmState.DEALLOCATED])
    assert [r.name for r in registry.list()] == ["vm01"]


def test_transition_checks_the_current_state(registry: PoolRegistry) -> None:
    registry.ensure_members(["vm01"], 1)
    rec = registry.transition("vm01", VmState.STARTING, [VmState.DEALLOCATED], now=T0,
                              operation='{"x":1}')
    assert (rec.state, rec.state_since, rec.operation) == (VmState.STARTING, T0, '{"x":1}')
    with pytest.raises(InvalidTransition, match="vm01.*starting.*cannot move to running"):
        registry.transition("vm01", VmState.RUNNING, [VmState.DEALLOCATED])
    with pytest.raises(TypeError, match="cannot set state_since"):
        registry.transition("vm01", VmState.RUNNING, [VmState.STARTING], state_since=T0)
    with pytest.raises(InvalidAddress):
        registry.transition("vm01", VmState.RUNNING, [VmState.STARTING], private_ip="nope")
    rec = registry.get("vm01")
    assert (rec.state, rec.state_since, rec.private_ip) == (VmState.STARTING, T0, "")
    # the boot time is measured when a starting VM becomes running
    rec = registry.transition("vm01", VmState.RUNNING, [VmState.STARTING],
                              now=T0 + timedelta(seconds=42))
    assert rec.boot_seconds == 42
    assert registry.get("vm01").boot_seconds == 42


def test_a_vm_holding_work_is_never_deallocated(registry: PoolRegistry) -> None:
    _running(registry, "vm01", slots=2)
    assert registry.claim_slot("vm01")
    for target in (VmState.DEALLOCATING, VmState.DEALLOCATED):
        with pytest.raises(VmBusy, match="holds 1 busy slot"):
            registry.transition("vm01", target, [VmState.RUNNING, VmState.DRAINING])
    with pytest.raises(VmBusy):
        registry.remove_member("vm01")
    rec = registry.get("vm01")
    assert (rec.state, rec.busy) == (VmState.RUNNING, 1)
    # draining is allowed: no new work, but the held slot stays
    registry.transition("vm01", VmState.DRAINING, [VmState.RUNNING])
    assert registry.claim_slot("vm01") is False
    assert registry.get("vm01").busy == 1
    registry.release_slot("vm01")
    rec = registry.transition("vm01", VmState.DEALLOCATING, [VmState.DRAINING])
    assert (rec.state, rec.busy) == (VmState.DEALLOCATING, 0)


def test_claim_and_release(registry: PoolRegistry) -> None:
    registry.ensure_members(["vm01"], 2)
    assert registry.claim_slot("vm01") is False  # deallocated VMs take no work
    registry.transition("vm01", VmState.RUNNING, [VmState.DEALLOCATED])
    assert registry.claim_slot("vm01", now=T0) is True
    assert registry.claim_slot("vm01", now=T0) is True
    assert registry.claim_slot("vm01", now=T0) is False  # full
    rec = registry.get("vm01")
    assert (rec.busy, rec.last_activity) == (2, T0)
    later = T0 + timedelta(minutes=5)
    for _ in range(4):
        registry.release_slot("vm01", now=later)
    rec = registry.get("vm01")
    assert (rec.busy, rec.last_activity) == (0, later)  # never below zero


def test_claim_on_a_starting_vm_makes_it_running(registry: PoolRegistry) -> None:
    registry.ensure_members(["vm01"], 1)
    registry.transition("vm01", VmState.STARTING, [VmState.DEALLOCATED], now=T0)
    assert registry.claim_slot("vm01", now=T0 + timedelta(seconds=30))
    rec = registry.get("vm01")
    assert (rec.state, rec.busy, rec.boot_seconds) == (VmState.RUNNING, 1, 30)


def test_heartbeat_promotes_starting_and_records_addresses(registry: PoolRegistry) -> None:
    registry.ensure_members(["vm01"], 1)
    registry.transition("vm01", VmState.STARTING, [VmState.DEALLOCATED], now=T0)
    beat = T0 + timedelta(seconds=10)
    registry.heartbeat("vm01", {"private_ip": "10.0.0.4", "public_ip": "20.1.2.3"}, now=beat)
    rec = registry.get("vm01")
    assert (rec.state, rec.last_heartbeat, rec.private_ip, rec.public_ip) == (
        VmState.RUNNING, beat, "10.0.0.4", "20.1.2.3")
    with pytest.raises(InvalidAddress):
        registry.heartbeat("vm01", {"private_ip": "10.0.0.999"})
    with pytest.raises(InvalidAddress, match="unknown address kind"):
        registry.heartbeat("vm01", {"mac": "x"})
    assert registry.get("vm01").last_heartbeat == beat  # a refused heartbeat changes nothing
    # a deallocated VM stays deallocated: only the scaler decides what runs
    registry.ensure_members(["vm02"], 1)
    registry.heartbeat("vm02")
    assert registry.get("vm02").state == VmState.DEALLOCATED


def test_remove_member(registry: PoolRegistry) -> None:
    registry.ensure_members(["vm01", "vm02"], 1)
    registry.transition("vm02", VmState.RUNNING, [VmState.DEALLOCATED])
    with pytest.raises(NotRemovable, match="vm02.*running"):
        registry.remove_member("vm02")
    registry.remove_member("vm01")
    assert [r.name for r in registry.list()] == ["vm02"]
    with pytest.raises(UnknownVm):
        registry.remove_member("vm01")


def test_twenty_threads_never_overbook_and_lose_no_claim(
        settings: Settings, connection: StorageConnection, registry: PoolRegistry) -> None:
    slots = {"vm01": 4, "vm02": 3, "vm03": 1}
    for name, n in slots.items():
        _running(registry, name, slots=n)
    capacity = sum(slots.values())
    barrier = threading.Barrier(20)
    results: list[str | None] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        own = PoolRegistry(connection.table_service().get_table_client(settings.vm_table))
        order = list(slots)[index % 3:] + list(slots)[:index % 3]
        try:
            barrier.wait(timeout=30)
            got = next((vm for vm in order if own.claim_slot(vm)), None)
        except BaseException as exc:  # noqa: BLE001 - reported below
            with lock:
                errors.append(exc)
            return
        with lock:
            results.append(got)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    taken = [vm for vm in results if vm]
    assert len(results) == 20
    assert len(taken) == capacity
    for name, n in slots.items():
        assert taken.count(name) == n
        assert registry.get(name).busy == n


class _SecondWriterInBetween(PoolRegistry):
    """Lets another client write the row right after our first read (a stale ETag)."""

    def __init__(self, table, other: PoolRegistry) -> None:  # noqa: ANN001
        super().__init__(table)
        self.other = other
        self.reads = 0

    def get(self, vm: str):  # noqa: ANN201
        rec = super().get(vm)
        self.reads += 1
        if self.reads == 1:
            assert self.other.claim_slot(vm)  # the row changes under our feet
        return rec


def test_stale_etag_is_retried_on_fresh_data(
        settings: Settings, connection: StorageConnection, registry: PoolRegistry) -> None:
    _running(registry, "vm01", slots=2)
    other = PoolRegistry(connection.table_service().get_table_client(settings.vm_table))
    racing = _SecondWriterInBetween(
        connection.table_service().get_table_client(settings.vm_table), other)
    assert racing.claim_slot("vm01") is True
    assert racing.reads == 2  # the first write hit a changed ETag and was redone
    assert registry.get("vm01").busy == 2  # both claims landed, none overwritten


def test_stale_etag_rechecks_the_rule(
        settings: Settings, connection: StorageConnection, registry: PoolRegistry) -> None:
    """The write that loses the race is re-decided: the last slot is not handed out twice."""
    _running(registry, "vm01", slots=1)
    other = PoolRegistry(connection.table_service().get_table_client(settings.vm_table))
    racing = _SecondWriterInBetween(
        connection.table_service().get_table_client(settings.vm_table), other)
    assert racing.claim_slot("vm01") is False
    assert registry.get("vm01").busy == 1


def test_deallocation_racing_a_claim_is_refused(
        settings: Settings, connection: StorageConnection, registry: PoolRegistry) -> None:
    """The scaler read busy == 0, an agent claims before the write: the move is refused."""
    _running(registry, "vm01", slots=1)
    other = PoolRegistry(connection.table_service().get_table_client(settings.vm_table))
    racing = _SecondWriterInBetween(
        connection.table_service().get_table_client(settings.vm_table), other)
    with pytest.raises(VmBusy):
        racing.transition("vm01", VmState.DEALLOCATING, [VmState.RUNNING])
    rec = registry.get("vm01")
    assert (rec.state, rec.busy) == (VmState.RUNNING, 1)


# --- an agent's own row: writes on the ETag of its last write ---------------------------------

def _row_requests(proxy: StorageProxy, table: str) -> list[str]:
    """`METHOD status` of each request for a VM row of `table` that went through the proxy."""
    return [f"{s.method} {s.status}" for s in proxy.requests()
            if s.service == "table" and s.path.split("/")[-1].startswith(f"{table}(")]


def _own(settings: Settings, proxy: StorageProxy, vm: str) -> OwnRow:
    conn = StorageConnection(name="proxied", connection_string=proxy.connection_string)
    return OwnRow(PoolRegistry(conn.table_service().get_table_client(settings.vm_table)), vm)


def test_own_row_claims_and_releases_without_reading(settings: Settings, proxy: StorageProxy,
                                                     registry: PoolRegistry) -> None:
    _running(registry, "vm01", slots=2)
    own = _own(settings, proxy, "vm01")
    assert own.claim_slot()
    assert _row_requests(proxy, settings.vm_table) == ["GET 200", "PUT 204"]  # nothing kept yet
    proxy.clear()
    own.release_slot()
    assert own.claim_slot()
    own.heartbeat(agent_version="1.2.3")
    own.release_slot()
    assert _row_requests(proxy, settings.vm_table) == ["PUT 204"] * 4
    rec = registry.get("vm01")
    assert (rec.busy, rec.agent_version) == (0, "1.2.3") and rec.last_heartbeat is not None


def test_own_row_redoes_a_write_someone_else_got_in_before(
        settings: Settings, proxy: StorageProxy, registry: PoolRegistry) -> None:
    _running(registry, "vm01", slots=3)
    own = _own(settings, proxy, "vm01")
    assert own.claim_slot()
    assert registry.claim_slot("vm01")  # another writer: the kept ETag is stale now
    proxy.clear()
    own.release_slot()
    assert _row_requests(proxy, settings.vm_table) == ["PUT 412", "GET 200", "PUT 204"]
    assert registry.get("vm01").busy == 1  # the other claim survived ours
    proxy.clear()
    own.release_slot()  # the fresh row is kept again
    assert _row_requests(proxy, settings.vm_table) == ["PUT 204"]
    assert registry.get("vm01").busy == 0


def test_own_row_decides_a_refusal_only_on_a_fresh_read(
        settings: Settings, proxy: StorageProxy, registry: PoolRegistry) -> None:
    _running(registry, "vm01", slots=1)
    own = _own(settings, proxy, "vm01")
    assert own.claim_slot()
    own.release_slot()
    assert registry.claim_slot("vm01")  # the last slot went elsewhere since our write
    assert own.claim_slot() is False  # the 412 sends it to a fresh read, which is full
    assert registry.get("vm01").busy == 1
    registry.release_slot("vm01")
    registry.transition("vm01", VmState.DRAINING, [VmState.RUNNING])
    assert own.claim_slot() is False  # draining takes no work
    registry.transition("vm01", VmState.RUNNING, [VmState.DRAINING])
    proxy.clear()
    # The kept row says draining; the refusal it implies is checked on a read, which is running.
    assert own.claim_slot() is True
    assert _row_requests(proxy, settings.vm_table) == ["GET 200", "PUT 204"]
    assert registry.get("vm01").busy == 1
