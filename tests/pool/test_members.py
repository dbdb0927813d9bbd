"""POOL_VMS parsing: ranges keep their padding, bad specs fail naming the setting."""
from __future__ import annotations

import pytest

from shared.pool.members import InvalidVmName, parse_pool_vms, validate_vm_name
from shared.settings import SettingError


def test_range_keeps_zero_padding() -> None:
    assert parse_pool_vms("vm01..vm10") == [f"vm{n:02d}" for n in range(1, 11)]
    assert parse_pool_vms("vm098..vm100") == ["vm098", "vm099", "vm100"]


def test_unpadded_range_and_mixed_lists() -> None:
    assert parse_pool_vms("vm8..vm11") == ["vm8", "vm9", "vm10", "vm11"]
    assert parse_pool_vms(" gpu-a , vm01..vm02,batch.x ") == ["gpu-a", "vm01", "vm02", "batch.x"]
    assert parse_pool_vms("vm1..3") == ["vm1", "vm2", "vm3"]  # the prefix may be left out


def test_duplicates_are_dropped_in_order() -> None:
    assert parse_pool_vms("vm02,vm01..vm03,vm01") == ["vm02", "vm01", "vm03"]


@pytest.mark.parametrize(("spec", "fragment"), [
    ("vm10..vm01", "reversed"),
    ("vm1..vm2000", "at most 1000"),
    ("a..b", "not a range"),
    ("a1..b3", "mixes prefixes"),
    ("vm01,,vm02", "empty entry"),
    ("", "at least one VM"),
    ("bad name", "not a valid VM name"),
    ("x/y", "not a valid VM name"),
    ("vm-", "not a valid VM name"),
    ("vm'; drop", "not a valid VM name"),
    ("a" * 65, "not a valid VM name"),
])
def test_bad_specs_name_the_setting(spec: str, fragment: str) -> None:
    with pytest.raises(SettingError) as err:
        parse_pool_vms(spec)
    assert err.value.name == "POOL_VMS"
    assert fragment in str(err.value)


def test_validate_vm_name() -> None:
    assert validate_vm_name("vm01") == "vm01"
    for bad in ("", "-vm", "vm.", "a b", "vm#1", None, 7):
        with pytest.raises(InvalidVmName):
            validate_vm_name(bad)
