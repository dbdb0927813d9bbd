"""Cost read back from the pool table and the claims on Azurite: a job's money is priced by the
member each of its attempts ran on."""
from datetime import datetime, timedelta, timezone

from shared.cost import CostBook
from shared.services import Services
from shared.storage import ensure_resources

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def _claim(services: Services, job_id: str, step: str, vm: str, at: datetime,
           seconds: float) -> None:
    services.claims.table.upsert_entity({"PartitionKey": job_id, "RowKey": step, "vm": vm,
                                         "state": "succeeded", "finishedAt": at,
                                         "durationMs": seconds * 1000})


def test_job_money_uses_the_price_of_the_member_each_attempt_ran_on(storage_env) -> None:
    services = Services.from_env({**storage_env, "VM_PRICES": "default=3.6,default:spot=0.36"})
    ensure_resources(services.settings, services.connection)
    for vm, priority in (("vm01", "regular"), ("spot01", "spot")):
        services.registry.record_interval({"vm": vm, "start": T0, "end": T0 + timedelta(hours=1),
                                           "bootSeconds": 60.0, "slots": 1,
                                           "priority": priority})
    # One job evicted from the spot member after 100 s and finished on demand in 50 s.
    _claim(services, "job-a", "0-0", "spot01", T0 + timedelta(minutes=10), 100)
    _claim(services, "job-a", "0-1", "vm01", T0 + timedelta(minutes=20), 50)
    _claim(services, "job-b", "0-0", "spot01", T0 + timedelta(minutes=30), 200)

    book = CostBook(services, now=T0 + timedelta(hours=2))
    a, b = book.job("job-a"), book.job("job-b")
    assert a["processingVmSeconds"] == 150
    assert abs(a["money"] - (100 * 0.36 + 50 * 3.6) / 3600) < 1e-6
    assert abs(b["money"] - 200 * 0.36 / 3600) < 1e-6  # not the regular 3.6 an hour
    assert book.job("job-unknown") == {"processingVmSeconds": 0.0, "money": 0.0}
    # The narrow read for one job (GET /api/jobs/{id}) answers the same.
    for job_id in ("job-a", "job-b", "job-unknown"):
        assert CostBook(services, now=T0 + timedelta(hours=2), job_id=job_id).job(
            job_id) == book.job(job_id)


def test_intervals_of_one_vm_leave_out_a_longer_name_with_the_same_prefix(storage_env) -> None:
    services = Services.from_env(storage_env)
    ensure_resources(services.settings, services.connection)
    for vm in ("vm01", "vm01-b", "vm02"):
        services.registry.record_interval({"vm": vm, "start": T0, "end": T0 + timedelta(hours=1),
                                           "bootSeconds": 1.0, "slots": 1,
                                           "priority": "regular"})
    assert [row["vm"] for row in services.registry.intervals(vm="vm01")] == ["vm01"]
    assert sorted(row["vm"] for row in services.registry.intervals()) == [
        "vm01", "vm01-b", "vm02"]


def test_job_without_prices_has_seconds_only(storage_env) -> None:
    services = Services.from_env(storage_env)
    ensure_resources(services.settings, services.connection)
    services.registry.record_interval({"vm": "vm09", "start": T0, "end": T0 + timedelta(hours=1),
                                       "bootSeconds": 0.0, "slots": 2, "priority": "regular"})
    _claim(services, "job-c", "0-0", "vm09", T0 + timedelta(minutes=5), 30)
    assert CostBook(services, now=T0 + timedelta(hours=2)).job("job-c") == {
        "processingVmSeconds": 15.0}  # two slots share the VM's second
