"""Settings: defaults, typed parsing, and errors that name the setting."""
import json
from pathlib import Path

import pytest

from shared.settings import SettingError, Settings, setting_names

ROOT = Path(__file__).resolve().parent.parent
BASE = {"CALLBACK_SIGNING_KEY": "k"}


def test_defaults_are_typed() -> None:
    s = Settings.from_env(BASE)
    assert s.vm_slots == 1 and isinstance(s.vm_slots, int)
    assert s.keep_originals is True
    assert s.pipeline_actions == ("process",)
    assert s.tables() == ("tblvm", "tbllog", "tblresult", "tblrun", "tblchange",
                         "tblclaim", "tblidem", "tblhook")
    assert s.queues() == ("work", "work-poison")


def test_values_are_parsed() -> None:
    s = Settings.from_env({**BASE, "VM_SLOTS": " 4 ", "KEEP_ORIGINALS": "no",
                           "PIPELINE_ACTIONS": "extract, transform", "POOL_BACKEND": "Azure"})
    assert (s.vm_slots, s.keep_originals, s.pipeline_actions, s.pool_backend) == (
        4, False, ("extract", "transform"), "azure")


def test_missing_required_setting_names_it() -> None:
    with pytest.raises(SettingError) as err:
        Settings.from_env({})
    assert err.value.name == "CALLBACK_SIGNING_KEY"
    assert "CALLBACK_SIGNING_KEY" in str(err.value) and "required" in str(err.value)


@pytest.mark.parametrize(("name", "value", "fragment"), [
    ("VM_SLOTS", "many", "expected an integer"),
    ("VM_SLOTS", "0", "from 1 to 256"),
    ("KEEP_ORIGINALS", "maybe", "true or false"),
    ("POOL_BACKEND", "gcp", "one of local, azure, external"),
    ("DATA_CONTAINER", "Data_Files", "not a valid name"),
    ("VM_TABLE", "tbl-vm", "not a valid table name"),
    ("COLLECT_SCHEDULE", "*/5 * * * *", "six NCRONTAB fields"),
    ("COLLECT_SCHEDULE", "0 99 * * * *", "not a valid schedule"),
    ("PIPELINE_ACTIONS", "a;rm -rf", "may only hold"),
    ("RETRY_BACKOFF_SECONDS", "-1", "from 0"),
])
def test_malformed_setting_names_it(name: str, value: str, fragment: str) -> None:
    with pytest.raises(SettingError) as err:
        Settings.from_env({**BASE, name: value})
    assert err.value.name == name
    assert str(err.value).startswith(f"setting {name}:")
    assert fragment in str(err.value)


def test_min_running_cannot_exceed_max_running() -> None:
    with pytest.raises(SettingError) as err:
        Settings.from_env({**BASE, "POOL_MAX_RUNNING": "2", "POOL_MIN_RUNNING": "3"})
    assert err.value.name == "POOL_MIN_RUNNING" and "POOL_MAX_RUNNING" in str(err.value)


def test_secrets_are_masked_in_describe() -> None:
    described = Settings.from_env({"CALLBACK_SIGNING_KEY": "s3cret"}).describe()
    assert described["CALLBACK_SIGNING_KEY"] == "***"
    assert "s3cret" not in json.dumps(described)


def test_local_settings_cover_every_setting_and_parse() -> None:
    values = json.loads((ROOT / "local.settings.json").read_text())["Values"]
    missing = [name for name in setting_names() if name not in values]
    assert missing == []
    assert values["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
    Settings.from_env(values)


def test_host_json_reads_hub_name_from_setting() -> None:
    host = json.loads((ROOT / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensionBundle"] == {"id": "Microsoft.Azure.Functions.ExtensionBundle",
                                       "version": "[4.*, 5.0.0)"}
    assert host["extensions"]["durableTask"]["hubName"] == "%TASKHUB_NAME%"
