"""Every app setting the function app reads, typed, in one place.

App settings reach Python as environment variables (from `local.settings.json` locally, from
the app's configuration in Azure). Reading them here, once, means a missing or malformed value
fails with a message naming the setting instead of surfacing later as a confusing error deep
inside a trigger.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields
from typing import Any, TypeVar

from shared.clock import utcnow

T = TypeVar("T")


class SettingError(ValueError):
    """A setting is missing or malformed; `name` is the setting's name."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"setting {name}: {message}")
        self.name = name


# --- parsers: each turns the raw string into a typed value or raises ValueError ---------------

_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{1,61}[a-z0-9])$")
_TABLE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,62}$")


def parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _in_range(kind: Callable[[str], T], what: str, low: T, high: T) -> Callable[[str], T]:
    def parse(raw: str) -> T:
        try:
            value = kind(raw.strip())
        except ValueError:
            raise ValueError(f"expected {what}, got {raw!r}") from None
        if not low <= value <= high:
            raise ValueError(f"expected {what} from {low} to {high}, got {value}")
        return value

    return parse


def parse_int_range(low: int, high: int) -> Callable[[str], int]:
    return _in_range(int, "an integer", low, high)


def parse_float_range(low: float, high: float) -> Callable[[str], float]:
    return _in_range(float, "a number", low, high)


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {raw!r}")
        return value

    return parse


def parse_container_name(raw: str) -> str:
    """Blob containers and queues share the same naming rule."""
    value = raw.strip()
    if not _NAME_RE.match(value) or "--" in value:
        raise ValueError(
            f"{raw!r} is not a valid name (3-63 lowercase letters, digits and single hyphens)")
    return value


def parse_table_name(raw: str) -> str:
    value = raw.strip()
    if not _TABLE_RE.match(value):
        raise ValueError(f"{raw!r} is not a valid table name (3-63 letters and digits)")
    return value


def parse_actions(raw: str) -> tuple[str, ...]:
    """`process` or `extract,transform`: the steps each file goes through, in order."""
    names = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not names:
        raise ValueError("expected at least one action name")
    for name in names:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
            raise ValueError(f"action name {name!r} may only hold letters, digits, _ and -")
    return names


def parse_json_object(raw: str) -> str:
    """A JSON object (kept as text), or empty."""
    text = raw.strip()
    if not text:
        return ""
    try:
        value = json.loads(text)
    except ValueError:
        raise ValueError("expected a JSON object") from None
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return text


def parse_list(raw: str) -> tuple[str, ...]:
    """A comma list; empty means none."""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def parse_prices(raw: str) -> tuple[tuple[str, float], ...]:
    """`Standard_D2s_v5=0.096,Standard_D2s_v5:spot=0.02`: hourly prices by size[:priority]."""
    prices: dict[str, float] = {}
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected size[:priority]=price, got {part!r}")
        try:
            price = float(value)
        except ValueError:
            raise ValueError(f"price of {key.strip()!r} is not a number: {value!r}") from None
        if price < 0:
            raise ValueError(f"price of {key.strip()!r} is negative")
        prices[key.strip()] = price
    return tuple(sorted(prices.items()))


def parse_text(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def parse_ncrontab(raw: str) -> str:
    """Six-field NCRONTAB (seconds first), as the Functions timer trigger reads it."""
    # The agent imports this module for its parsers but does not install cronsim.
    from cronsim import CronSim, CronSimError  # noqa: PLC0415

    value = raw.strip()
    parts = value.split()
    if len(parts) != 6:
        raise ValueError(f"expected six NCRONTAB fields (seconds first), got {len(parts)}")
    try:
        CronSim(value, utcnow())
    except CronSimError as exc:
        raise ValueError(f"{raw!r} is not a valid schedule: {exc}") from None
    return value


# --- the settings ----------------------------------------------------------------------------


def _setting(env_name: str, parse: Callable[[str], Any], default: str | None = None,
             secret: bool = False) -> Any:
    """Declare a dataclass field bound to an app setting; `default=None` makes it required."""
    return field(metadata={"env": env_name, "parse": parse, "default": default, "secret": secret})


@dataclass(frozen=True)
class Settings:
    """The app's configuration. Build it with `Settings.from_env()`."""

    storage_connection: str = _setting("STORAGE_CONNECTION", parse_text, "AzureWebJobsStorage")
    taskhub_name: str = _setting("TASKHUB_NAME", parse_table_name, "vmpool")

    data_container: str = _setting("DATA_CONTAINER", parse_container_name, "data")
    results_container: str = _setting("RESULTS_CONTAINER", parse_container_name, "results")
    archive_container: str = _setting("ARCHIVE_CONTAINER", parse_container_name, "archive")
    failed_container: str = _setting("FAILED_CONTAINER", parse_container_name, "failed")
    work_queue: str = _setting("WORK_QUEUE", parse_container_name, "work")

    vm_table: str = _setting("VM_TABLE", parse_table_name, "tblvm")
    log_table: str = _setting("LOG_TABLE", parse_table_name, "tbllog")
    result_table: str = _setting("RESULT_TABLE", parse_table_name, "tblresult")
    run_table: str = _setting("RUN_TABLE", parse_table_name, "tblrun")
    change_table: str = _setting("CHANGE_TABLE", parse_table_name, "tblchange")
    claim_table: str = _setting("CLAIM_TABLE", parse_table_name, "tblclaim")
    idempotency_table: str = _setting("IDEMPOTENCY_TABLE", parse_table_name, "tblidem")
    idempotency_retention_seconds: int = _setting(
        "IDEMPOTENCY_RETENTION_SECONDS", parse_int_range(60, 30 * 86400), "86400")
    webhook_table: str = _setting("WEBHOOK_TABLE", parse_table_name, "tblhook")
    # hourly price per VM size (`size[:priority]=price,...`); empty = cost in seconds only
    vm_prices: tuple[tuple[str, float], ...] = _setting("VM_PRICES", parse_prices, "")
    # webhooks: the HMAC key (empty = callbackUrl refused), hosts exempt from the https and
    # public-address rules (local use only), attempts and the first pause between them
    webhook_signing_key: str = _setting("WEBHOOK_SIGNING_KEY", str, "", secret=True)
    webhook_allow_hosts: tuple[str, ...] = _setting("WEBHOOK_ALLOW_HOSTS", parse_list, "")
    webhook_max_attempts: int = _setting("WEBHOOK_MAX_ATTEMPTS", parse_int_range(1, 20), "5")
    webhook_backoff_seconds: float = _setting(
        "WEBHOOK_BACKOFF_SECONDS", parse_float_range(0.1, 3600), "10")

    pool_backend: str = _setting("POOL_BACKEND", _choice("local", "azure", "external"), "local")
    pool_vms: str = _setting("POOL_VMS", parse_text, "vm01..vm03")
    # Members that are Azure Spot VMs (same syntax as POOL_VMS; empty: none). They are started
    # first; an evicted one waits SPOT_BACKOFF_SECONDS before it is started again.
    pool_spot_vms: str = _setting("POOL_SPOT_VMS", str, "")
    spot_backoff_seconds: int = _setting("SPOT_BACKOFF_SECONDS", parse_int_range(0, 86400), "900")
    # billingProfile.maxPrice of spot VMs from pool.add (USD per hour; -1: up to on-demand)
    pool_spot_max_price: float = _setting("POOL_SPOT_MAX_PRICE", parse_float_range(-1, 10000),
                                          "-1")
    pool_max_running: int = _setting("POOL_MAX_RUNNING", parse_int_range(0, 1000), "10")
    pool_min_running: int = _setting("POOL_MIN_RUNNING", parse_int_range(0, 1000), "0")
    vm_slots: int = _setting("VM_SLOTS", parse_int_range(1, 256), "1")
    boot_timeout_seconds: int = _setting("BOOT_TIMEOUT_SECONDS", parse_int_range(10, 7200), "600")
    idle_cooldown_seconds: int = _setting("IDLE_COOLDOWN_SECONDS", parse_int_range(0, 86400), "120")
    heartbeat_timeout_seconds: int = _setting(
        "HEARTBEAT_TIMEOUT_SECONDS", parse_int_range(10, 86400), "300")

    pipeline_actions: tuple[str, ...] = _setting("PIPELINE_ACTIONS", parse_actions, "process")
    job_timeout_seconds: int = _setting("JOB_TIMEOUT_SECONDS", parse_int_range(10, 604800), "3600")
    max_attempts: int = _setting("MAX_ATTEMPTS", parse_int_range(1, 20), "3")
    retry_backoff_seconds: float = _setting(
        "RETRY_BACKOFF_SECONDS", parse_float_range(0, 3600), "30")
    keep_originals: bool = _setting("KEEP_ORIGINALS", parse_bool, "true")

    collect_schedule: str = _setting("COLLECT_SCHEDULE", parse_ncrontab, "0 0 */4 * * *")
    collect_source: str = _setting("COLLECT_SOURCE", parse_text, "sample")
    scaler_schedule: str = _setting("SCALER_SCHEDULE", parse_ncrontab, "*/30 * * * * *")
    blob_trigger_source: str = _setting(
        "BLOB_TRIGGER_SOURCE", _choice("logsandcontainerscan", "eventgrid"),
        "LogsAndContainerScan")

    callback_signing_key: str = _setting("CALLBACK_SIGNING_KEY", parse_text, secret=True)
    check_caller_ip: bool = _setting("CHECK_CALLER_IP", parse_bool, "false")
    max_body_bytes: int = _setting("MAX_BODY_BYTES", parse_int_range(1024, 100 * 1024 * 1024),
                                   str(1024 * 1024))

    azure_subscription_id: str = _setting("AZURE_SUBSCRIPTION_ID", str, "")
    pool_resource_group: str = _setting("POOL_RESOURCE_GROUP", str, "")
    # azure pool backend: ARM endpoint (empty = the public cloud) and provisioning defaults
    arm_endpoint: str = _setting("ARM_ENDPOINT", str, "")
    pool_location: str = _setting("POOL_LOCATION", str, "")
    pool_vm_size: str = _setting("POOL_VM_SIZE", str, "")
    pool_vm_image: str = _setting("POOL_VM_IMAGE", str, "")
    pool_subnet_id: str = _setting("POOL_SUBNET_ID", str, "")
    pool_admin_username: str = _setting("POOL_ADMIN_USERNAME", str, "")
    pool_ssh_public_key: str = _setting("POOL_SSH_PUBLIC_KEY", str, "")
    pool_public_ip: bool = _setting("POOL_PUBLIC_IP", parse_bool, "false")
    # ...and what its agent needs (shared/pool/vmspec.py writes them into the VM's userData)
    pool_vm_identity_id: str = _setting("POOL_VM_IDENTITY_ID", str, "")
    pool_vm_identity_client_id: str = _setting("POOL_VM_IDENTITY_CLIENT_ID", str, "")
    pool_agent_package_url: str = _setting("POOL_AGENT_PACKAGE_URL", str, "")
    pool_agent_api_base_url: str = _setting("POOL_AGENT_API_BASE_URL", str, "")
    pool_agent_function_key: str = _setting("POOL_AGENT_FUNCTION_KEY", str, "", secret=True)
    pool_agent_actions: str = _setting("POOL_AGENT_ACTIONS", parse_json_object, "")
    # local pool backend: the agent command, where pid files live, how long a stop may take
    local_agent_command: str = _setting("LOCAL_AGENT_COMMAND", parse_text, "python -m agent")
    local_state_dir: str = _setting("LOCAL_STATE_DIR", str, "")
    local_stop_grace_seconds: float = _setting(
        "LOCAL_STOP_GRACE_SECONDS", parse_float_range(0, 3600), "30")
    # ...and how long a local "VM" takes to boot (before its agent launches) and to deallocate
    # (0: at once), so a local run can stand in for real VMs' timings
    local_boot_seconds: float = _setting("LOCAL_BOOT_SECONDS", parse_float_range(0, 3600), "0")
    local_deallocate_seconds: float = _setting(
        "LOCAL_DEALLOCATE_SECONDS", parse_float_range(0, 3600), "0")
    local_agent_api_base_url: str = _setting(
        "LOCAL_AGENT_API_BASE_URL", parse_text, "http://127.0.0.1:7071")
    local_agent_function_key: str = _setting("LOCAL_AGENT_FUNCTION_KEY", str, "", secret=True)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every setting; raise `SettingError` naming the first bad one."""
        source = os.environ if env is None else env
        values = {f.name: _read(f, source) for f in fields(cls)}
        if values["pool_min_running"] > values["pool_max_running"]:
            raise SettingError("POOL_MIN_RUNNING", f"must not exceed POOL_MAX_RUNNING "
                               f"({values['pool_max_running']}), got {values['pool_min_running']}")
        return cls(**values)

    @classmethod
    def one(cls, attr: str, env: Mapping[str, str] | None = None) -> Any:
        """One setting, parsed as `from_env` parses it, without reading the others: for values
        fixed when the app is indexed (trigger bindings), before the rest is needed."""
        by_name = {f.name: f for f in fields(cls)}
        return _read(by_name[attr], os.environ if env is None else env)

    def describe(self) -> dict[str, str]:
        """Setting names and values for logs, with secrets masked."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.metadata["env"]] = "***" if f.metadata["secret"] else str(value)
        return out

    def containers(self) -> tuple[str, ...]:
        return (self.data_container, self.results_container, self.archive_container,
                self.failed_container)

    def queues(self) -> tuple[str, ...]:
        return (self.work_queue, f"{self.work_queue}-poison")

    def tables(self) -> tuple[str, ...]:
        return (self.vm_table, self.log_table, self.result_table, self.run_table,
                self.change_table, self.claim_table, self.idempotency_table,
                self.webhook_table)


def _read(setting: Field, source: Mapping[str, str]) -> Any:
    meta = setting.metadata
    raw = source.get(meta["env"])
    if raw is None or (raw.strip() == "" and meta["default"] is not None):
        raw = meta["default"]
    if raw is None:
        raise SettingError(meta["env"], "is required but not set")
    try:
        return meta["parse"](raw)
    except ValueError as exc:
        raise SettingError(meta["env"], str(exc)) from None


def setting_names() -> list[str]:
    """Every app setting name the app reads (used by infra checks)."""
    return [f.metadata["env"] for f in fields(Settings)]

