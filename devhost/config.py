"""host.json and local.settings.json, read the way the Functions host reads them.

App settings become environment variables before the app is imported (without overriding
variables already set), and `%NAME%` in binding fields resolves from those settings.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from devhost.errors import ConfigError

DEFAULT_HUB_NAME = "TestHubName"
_SETTING_REF = re.compile(r"%([^%]+)%")
TIMESPAN_RE = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{1,2}):(\d{1,2})(?:\.(\d+))?$")

# Binding fields that name things rather than carry values: never resolved.
_UNRESOLVED_FIELDS = frozenset({"name", "type", "direction", "dataType"})


def read_json_file(path: Path, what: str) -> dict[str, Any]:
    """Parse a JSON object file; a missing file is an empty object, a bad one a ConfigError."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{what} ({path}) is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} ({path}) must hold a JSON object")
    return data


def read_local_settings(script_root: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """`Values` (as strings) and the `Host` section of local.settings.json."""
    data = read_json_file(script_root / "local.settings.json", "local.settings.json")
    if data.get("IsEncrypted"):
        raise ConfigError("local.settings.json is encrypted; decrypt it first")
    values = data.get("Values", {})
    if not isinstance(values, dict):
        raise ConfigError("local.settings.json: Values must be an object")
    out: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, (dict, list)):
            raise ConfigError(f"local.settings.json: Values.{key} must be a string")
        if value is None:
            out[str(key)] = ""
        elif isinstance(value, bool):
            out[str(key)] = "true" if value else "false"
        else:
            out[str(key)] = str(value)
    host = data.get("Host", {})
    return out, host if isinstance(host, dict) else {}


def resolve_setting_refs(value: str, settings: Mapping[str, str], where: str) -> str:
    """Replace every `%NAME%` with the setting's value; an unknown name is a ConfigError."""

    def repl(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in settings:
            raise ConfigError(f"{where}: '%{name}%' does not resolve to an app setting")
        return settings[name]

    return _SETTING_REF.sub(repl, value)


def resolve_binding(binding: Mapping[str, Any], settings: Mapping[str, str],
                    where: str) -> dict[str, Any]:
    """A copy of a binding dict with `%NAME%` resolved in its string fields."""
    out: dict[str, Any] = {}
    for key, value in binding.items():
        if isinstance(value, str) and key not in _UNRESOLVED_FIELDS:
            out[key] = resolve_setting_refs(value, settings, f"{where} field {key!r}")
        else:
            out[key] = value
    return out


def disabled_functions(names: list[str], settings: Mapping[str, str]) -> frozenset[str]:
    """The functions an app setting disables: `AzureWebJobs.<name>.Disabled` (or, where a
    platform allows no dots in variable names, `AzureWebJobs_<name>_Disabled`) set to `true` or
    `1`, both case-insensitive like every .NET configuration key (the WebJobs SDK's
    `FunctionIndexer.IsDisabled` and `IsSettingEnabled`)."""
    enabled = {key.lower() for key, value in settings.items()
               if str(value).strip().lower() in ("true", "1")}
    return frozenset(name for name in names
                     if f"azurewebjobs.{name}.disabled".lower() in enabled
                     or f"azurewebjobs_{name}_disabled".lower() in enabled)


def parse_timespan(raw: Any, what: str) -> timedelta:
    """A host.json duration: `hh:mm:ss[.fff]`, `d.hh:mm:ss`, or an integer of milliseconds."""
    if isinstance(raw, bool):
        raise ConfigError(f"host.json {what}: expected a duration, got {raw!r}")
    if isinstance(raw, (int, float)):
        return timedelta(milliseconds=float(raw))
    match = TIMESPAN_RE.match(str(raw).strip())
    if not match:
        raise ConfigError(f"host.json {what}: expected hh:mm:ss, got {raw!r}")
    days, hours, minutes, seconds, fraction = match.groups()
    return timedelta(days=int(days or 0), hours=int(hours), minutes=int(minutes),
                     seconds=float(f"{seconds}.{fraction or 0}"))


def _int(section: Mapping[str, Any], key: str, default: int, low: int, high: int,
         what: str) -> int:
    raw = section.get(key, default)
    if isinstance(raw, bool) or not isinstance(raw, int) or not low <= raw <= high:
        raise ConfigError(f"host.json {what}.{key}: expected an integer from {low} to {high},"
                          f" got {raw!r}")
    return raw


@dataclass(frozen=True)
class HostConfig:
    """The parts of host.json the local host honours."""

    route_prefix: str = "api"
    function_timeout: timedelta | None = timedelta(minutes=30)
    queue_batch_size: int = 16
    queue_new_batch_threshold: int = 8
    queue_max_dequeue_count: int = 5
    queue_visibility_timeout: timedelta = timedelta(0)
    queue_max_polling_interval: timedelta = timedelta(minutes=1)
    hub_name: str = DEFAULT_HUB_NAME
    durable_connection: str = "AzureWebJobsStorage"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], settings: Mapping[str, str]) -> HostConfig:
        """Validate host.json; `%NAME%` in the hub name resolves from `settings`."""
        version = data.get("version", "2.0")
        if str(version) != "2.0":
            raise ConfigError(f"host.json version must be '2.0', got {version!r}")
        extensions = data.get("extensions") or {}
        if not isinstance(extensions, dict):
            raise ConfigError("host.json extensions must be an object")
        http = extensions.get("http") or {}
        prefix = http.get("routePrefix", "api")
        if not isinstance(prefix, str):
            raise ConfigError("host.json extensions.http.routePrefix must be a string")
        timeout_raw = data.get("functionTimeout")
        timeout = (timedelta(minutes=30) if timeout_raw is None
                   else None if str(timeout_raw) == "-1"
                   else parse_timespan(timeout_raw, "functionTimeout"))
        queues = extensions.get("queues") or {}
        batch = _int(queues, "batchSize", 16, 1, 32, "extensions.queues")
        threshold = _int(queues, "newBatchThreshold", batch // 2, 0, 1000, "extensions.queues")
        durable = extensions.get("durableTask") or {}
        hub = durable.get("hubName") or DEFAULT_HUB_NAME
        hub = resolve_setting_refs(str(hub), settings, "host.json durableTask.hubName")
        provider = durable.get("storageProvider") or {}
        return cls(
            route_prefix=prefix.strip("/"),
            function_timeout=timeout,
            queue_batch_size=batch,
            queue_new_batch_threshold=threshold,
            queue_max_dequeue_count=_int(queues, "maxDequeueCount", 5, 1, 1000,
                                         "extensions.queues"),
            queue_visibility_timeout=parse_timespan(
                queues.get("visibilityTimeout", "00:00:00"), "extensions.queues.visibilityTimeout"),
            queue_max_polling_interval=parse_timespan(
                queues.get("maxPollingInterval", "00:01:00"),
                "extensions.queues.maxPollingInterval"),
            hub_name=hub,
            durable_connection=str(provider.get("connectionStringName")
                                   or provider.get("connectionName") or "AzureWebJobsStorage"),
        )


def load_host_config(script_root: Path, settings: Mapping[str, str]) -> HostConfig:
    return HostConfig.from_dict(read_json_file(script_root / "host.json", "host.json"), settings)
