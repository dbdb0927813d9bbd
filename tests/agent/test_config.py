"""Agent configuration: environment, JSON/TOML file, and errors that name the variable."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.config import ConfigError, load, parse_actions, variable_names

BASE = {
    "AGENT_VM_NAME": "vm01",
    "AGENT_STORAGE_CONNECTION": "UseDevelopmentStorage=true",
    "AGENT_API_BASE_URL": "http://127.0.0.1:7071/",
    "AGENT_FUNCTION_KEY": "key-7f3a",
    "AGENT_ACTIONS": '{"process": "convert --in {input} --out={output}"}',
}


def test_minimal_environment_gives_defaults() -> None:
    config = load(BASE)
    assert config.vm_name == "vm01" and config.api_base_url == "http://127.0.0.1:7071"
    assert config.actions == {"process": ("convert", "--in", "{input}", "--out={output}")}
    assert config.storage.connection_string and "127.0.0.1:10000" in \
        config.storage.connection_string
    assert (config.slots, config.work_queue, config.results_container) == (1, "work", "results")
    assert (config.claim_table, config.vm_table) == ("tblclaim", "tblvm")
    shown = repr(config) + json.dumps(config.describe())
    assert "key-7f3a" not in shown and "AccountKey" not in shown


@pytest.mark.parametrize("missing", ["AGENT_VM_NAME", "AGENT_API_BASE_URL", "AGENT_ACTIONS",
                                     "AGENT_STORAGE_CONNECTION"])
def test_missing_required_variable_is_named(missing: str) -> None:
    env = {k: v for k, v in BASE.items() if k != missing}
    with pytest.raises(ConfigError) as err:
        load(env)
    assert err.value.name == missing and missing in str(err.value)


@pytest.mark.parametrize(("name", "value", "fragment"), [
    ("AGENT_SLOTS", "0", "from 1 to 256"),
    ("AGENT_SLOTS", "two", "integer"),
    ("AGENT_VISIBILITY_TIMEOUT_SECONDS", "1.5", "integer"),
    ("AGENT_POLL_MIN_SECONDS", "nan", "from"),
    ("AGENT_IDLE_SECONDS", "-1", "from 0"),
    ("AGENT_MAX_OUTPUT_BYTES", "0", "from 1"),
    ("AGENT_WORK_QUEUE", "Work_Queue", "not a valid name"),
    ("AGENT_VM_TABLE", "tbl-vm", "not a valid table name"),
    ("AGENT_API_BASE_URL", "ftp://x", "http(s) URL"),
    ("AGENT_VM_NAME", "../vm", "not a VM name"),
    ("AGENT_ACTIONS", "{not json", "not JSON"),
    ("AGENT_ACTIONS", "[]", "non-empty JSON object"),
    ("AGENT_ACTIONS", '{"bad name": "x"}', "may only hold"),
    ("AGENT_ACTIONS", '{"p": ""}', "command is empty"),
    ("AGENT_ACTIONS", '{"p": "cmd \\"unclosed"}', "quotation"),
    ("AGENT_ACTIONS", '{"p": [1, 2]}', "list of strings"),
])
def test_bad_values_are_refused_with_the_variable_name(name: str, value: str,
                                                       fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load({**BASE, name: value})
    assert err.value.name == name and fragment in str(err.value)


def test_poll_bounds_must_be_ordered() -> None:
    with pytest.raises(ConfigError) as err:
        load({**BASE, "AGENT_POLL_MIN_SECONDS": "5", "AGENT_POLL_MAX_SECONDS": "1"})
    assert err.value.name == "AGENT_POLL_MIN_SECONDS"


def test_identity_based_storage() -> None:
    env = {k: v for k, v in BASE.items() if k != "AGENT_STORAGE_CONNECTION"}
    env.update({"AGENT_STORAGE__blobServiceUri": "https://acct.blob.core.windows.net",
                "AGENT_STORAGE__queueServiceUri": "https://acct.queue.core.windows.net",
                "AGENT_STORAGE__tableServiceUri": "https://acct.table.core.windows.net",
                "AGENT_STORAGE__credential": "managedidentity",
                "AGENT_STORAGE__clientId": "00000000-0000-0000-0000-000000000001"})
    storage = load(env).storage
    assert storage.connection_string is None
    assert storage.queue_uri == "https://acct.queue.core.windows.net"
    assert storage.credential_kind == "managedidentity" and storage.client_id.endswith("1")
    env["AGENT_STORAGE__credential"] = "password"
    with pytest.raises(ConfigError) as err:
        load(env)
    assert err.value.name == "AGENT_STORAGE__credential"


def test_toml_file_with_environment_override(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        'AGENT_VM_NAME = "vm09"\nAGENT_SLOTS = 4\nAGENT_FUNCTION_KEY = "from-file"\n'
        'AGENT_API_BASE_URL = "https://app.example"\n'
        'AGENT_STORAGE_CONNECTION = "UseDevelopmentStorage=true"\n'
        '[AGENT_ACTIONS]\nprocess = ["tool", "{input}", "{output}"]\n')
    config = load({"AGENT_CONFIG": str(path), "AGENT_SLOTS": "2"})
    assert config.vm_name == "vm09" and config.slots == 2
    assert config.actions == {"process": ("tool", "{input}", "{output}")}


def test_json_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.json"
    path.write_text(json.dumps({**BASE, "AGENT_ACTIONS": {"x": "run {input}"},
                                "AGENT_IDLE_SECONDS": 0}))
    config = load({"AGENT_CONFIG": str(path)})
    assert config.actions == {"x": ("run", "{input}")} and config.idle_seconds == 0


@pytest.mark.parametrize(("text", "suffix", "fragment"), [
    ('{"AGENT_VM_NAM": "typo"}', ".json", "unknown name 'AGENT_VM_NAM'"),
    ("[1]", ".json", "must hold an object"),
    ("{", ".json", "not valid JSON"),
    ("x = = 1", ".toml", "not valid TOML"),
])
def test_bad_files_are_refused(tmp_path: Path, text: str, suffix: str, fragment: str) -> None:
    path = tmp_path / f"agent{suffix}"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load({**BASE, "AGENT_CONFIG": str(path)})
    assert err.value.name == "AGENT_CONFIG" and fragment in str(err.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load({**BASE, "AGENT_CONFIG": str(tmp_path / "nope.json")})
    assert err.value.name == "AGENT_CONFIG" and "cannot read" in str(err.value)


def test_action_templates_are_split_without_a_shell() -> None:
    actions = parse_actions(json.dumps({"p": "sh -c 'echo {input}; rm x' > {output}"}))
    assert actions["p"] == ("sh", "-c", "echo {input}; rm x", ">", "{output}")


def test_every_variable_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "agent.md").read_text()
    missing = [name for name in variable_names() if f"`{name}`" not in doc]
    assert missing == []


def test_env_file_keeps_json_quotes_and_passes_other_names_on(tmp_path: Path) -> None:
    """The env file cloud-init writes: values verbatim (systemd would strip JSON's quotes)."""
    path = tmp_path / "agent.env"
    lines = [f"{k}={v}" for k, v in BASE.items() if k != "AGENT_ACTIONS"]
    path.write_text("# written at boot\n" + "\n".join(lines) + "\n"
                    'AGENT_ACTIONS={"process": ["tool", "--opt=\\"x y\\"", "{input}"]}\n'
                    "export AGENT_SLOTS='3'\nAZURE_CLIENT_ID=abc\n\n")
    config = load({"AGENT_CONFIG": str(path)})
    assert config.actions == {"process": ("tool", '--opt="x y"', "{input}")}
    assert config.slots == 3 and config.extra_env == {"AZURE_CLIENT_ID": "abc"}
    assert load({"AGENT_CONFIG": str(path), "AZURE_CLIENT_ID": "set"}).extra_env == {}
    path.write_text("AGENT_SLOTS 3\n")
    with pytest.raises(ConfigError) as err:
        load({**BASE, "AGENT_CONFIG": str(path)})
    assert "line 1 is not NAME=VALUE" in str(err.value)
    path.write_text("AGENT_SLOTZ=3\n")
    with pytest.raises(ConfigError) as err:
        load({**BASE, "AGENT_CONFIG": str(path)})
    assert "unknown name 'AGENT_SLOTZ'" in str(err.value)


def test_booleans() -> None:
    config = load({**BASE, "AGENT_USE_POOL": "false", "AGENT_EXIT_WHEN_IDLE": "yes"})
    assert config.use_pool is False and config.exit_when_idle is True
    with pytest.raises(ConfigError) as err:
        load({**BASE, "AGENT_USE_POOL": "maybe"})
    assert err.value.name == "AGENT_USE_POOL"


def test_function_key_may_be_empty_for_an_app_without_keys() -> None:
    assert load({**BASE, "AGENT_FUNCTION_KEY": ""}).function_key == ""
    assert load({k: v for k, v in BASE.items() if k != "AGENT_FUNCTION_KEY"}).function_key == ""


def test_default_work_folder_is_per_vm() -> None:
    assert load(BASE).work_dir.parts[-2:] == ("vmpool-agent", "vm01")
