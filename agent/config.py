"""Agent configuration from `AGENT_*` environment variables or a JSON/TOML file.

The file named by `AGENT_CONFIG` holds the same names as the environment (a flat object; in TOML
`AGENT_ACTIONS` may be a table). The environment overrides the file. Every value is checked here,
once, so a bad one stops the agent at start-up with a message naming the variable instead of
failing later in the middle of a job.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.contracts import InvalidVmName, validate_vm_name
from shared.settings import (
    parse_bool,
    parse_container_name,
    parse_float_range,
    parse_int_range,
    parse_table_name,
    parse_text,
)
from shared.storage import StorageConfigError, StorageConnection

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

STORAGE_NAME = "AGENT_STORAGE"
INPUT, OUTPUT = "{input}", "{output}"
_ACTION_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ConfigError(ValueError):
    """A configuration value is missing or malformed; `name` is the variable's name."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent reads from its environment, typed and validated."""

    vm_name: str
    storage: StorageConnection = field(repr=False)  # a connection string holds the account key
    api_base_url: str
    actions: dict[str, tuple[str, ...]]
    function_key: str = field(default="", repr=False)  # empty: an app that checks no keys
    action_timeout_seconds: float = 3600.0
    slots: int = 1
    work_dir: Path = Path(tempfile.gettempdir()) / "vmpool-agent"
    work_queue: str = "work"
    results_container: str = "results"
    claim_table: str = "tblclaim"
    vm_table: str = "tblvm"
    poll_min_seconds: float = 1.0
    poll_max_seconds: float = 30.0
    visibility_timeout_seconds: int = 120
    idle_seconds: float = 300.0
    max_output_bytes: int = 10 * 1024**3
    claim_stale_seconds: float = 300.0
    heartbeat_seconds: float = 30.0
    api_retry_seconds: float = 300.0
    api_timeout_seconds: float = 30.0
    use_pool: bool = True           # False where no pool table row exists (Kubernetes pods)
    exit_when_idle: bool = False    # exit 0 after the idle time (a Kubernetes Job's agent)
    max_dequeue_count: int = 5      # a malformed message moves to `<queue>-poison` after this
    # Azure's Scheduled Events (IMDS) for a spot VM's Preempt notice; empty: not watched
    scheduled_events_url: str = ""
    scheduled_events_seconds: float = 5.0  # the notice is about 30 s: look well inside it
    package_container: str = ""     # where releases are published; empty: no self-upgrade
    install_dir: Path | None = None  # versions/ and the `app` link PYTHONPATH names
    upgrade_check_seconds: float = 300.0  # how often an idle agent looks for a new release
    extra_env: dict[str, str] = field(default_factory=dict, repr=False)  # from an env file

    @property
    def job_heartbeat_seconds(self) -> float:
        """How often a running job refreshes its message and claim: well inside both limits."""
        return max(0.2, min(self.visibility_timeout_seconds, self.claim_stale_seconds) / 4)

    def describe(self) -> dict[str, str]:
        """Settings for logs, without secrets."""
        storage = ("connection string" if self.storage.connection_string
                   else f"identity ({self.storage.blob_uri})")
        return {"vm": self.vm_name, "storage": storage, "api": self.api_base_url,
                "actions": ",".join(sorted(self.actions)),
                "slots": str(self.slots), "workDir": str(self.work_dir),
                "queue": self.work_queue, "results": self.results_container}


# --- parsers: raw text -> value, ValueError on bad input ---------------------------------------


def _vm_name(raw: str) -> str:
    """The pool's own rule, so the agent never runs under a name the pool refuses."""
    try:
        return validate_vm_name(raw.strip())
    except InvalidVmName:
        raise ValueError(f"{raw!r} is not a VM name (1-64 letters, digits, '-', '_' or '.', "
                         "starting with a letter or digit and not ending in '-' or '.')") from None


def _url(raw: str) -> str:
    value = raw.strip().rstrip("/")
    if not re.match(r"^https?://[^\s/]+(/\S*)?$", value):
        raise ValueError(f"expected an http(s) URL, got {raw!r}")
    return value


def parse_actions(raw: str) -> dict[str, tuple[str, ...]]:
    """`{"name": "cmd {input} {output}" | ["cmd", "{input}", ...]}` -> argument templates."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"is not JSON: {exc}") from None
    if not isinstance(body, dict) or not body:
        raise ValueError("expected a non-empty JSON object of action name -> command")
    actions: dict[str, tuple[str, ...]] = {}
    for name, command in body.items():
        if not _ACTION_NAME_RE.match(name):
            raise ValueError(f"action name {name!r} may only hold letters, digits, _ and -")
        if isinstance(command, str):
            try:
                args = shlex.split(command)
            except ValueError as exc:
                raise ValueError(f"action {name!r}: {exc}") from None
        elif isinstance(command, list) and all(isinstance(a, str) for a in command):
            args = list(command)
        else:
            raise ValueError(f"action {name!r}: expected a command string or a list of strings")
        if not args or not args[0].strip():
            raise ValueError(f"action {name!r}: the command is empty")
        if any("\x00" in a for a in args):
            raise ValueError(f"action {name!r}: NUL in an argument")
        actions[name] = tuple(args)
    return actions


_FIELDS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "AGENT_VM_NAME": ("vm_name", _vm_name),
    "AGENT_API_BASE_URL": ("api_base_url", _url),
    "AGENT_FUNCTION_KEY": ("function_key", str.strip),
    "AGENT_ACTIONS": ("actions", parse_actions),
    "AGENT_ACTION_TIMEOUT_SECONDS": ("action_timeout_seconds", parse_float_range(1, 7 * 86400)),
    "AGENT_SLOTS": ("slots", parse_int_range(1, 256)),
    "AGENT_WORK_DIR": ("work_dir", lambda raw: Path(parse_text(raw)).expanduser()),
    "AGENT_WORK_QUEUE": ("work_queue", parse_container_name),
    "AGENT_RESULTS_CONTAINER": ("results_container", parse_container_name),
    "AGENT_CLAIM_TABLE": ("claim_table", parse_table_name),
    "AGENT_VM_TABLE": ("vm_table", parse_table_name),
    "AGENT_POLL_MIN_SECONDS": ("poll_min_seconds", parse_float_range(0.01, 3600)),
    "AGENT_POLL_MAX_SECONDS": ("poll_max_seconds", parse_float_range(0.01, 3600)),
    "AGENT_VISIBILITY_TIMEOUT_SECONDS": ("visibility_timeout_seconds",
                                         parse_int_range(1, 7 * 86400)),
    "AGENT_IDLE_SECONDS": ("idle_seconds", parse_float_range(0, 7 * 86400)),
    "AGENT_MAX_OUTPUT_BYTES": ("max_output_bytes", parse_int_range(1, 4 * 1024**4)),
    "AGENT_CLAIM_STALE_SECONDS": ("claim_stale_seconds", parse_float_range(1, 7 * 86400)),
    "AGENT_HEARTBEAT_SECONDS": ("heartbeat_seconds", parse_float_range(0.1, 3600)),
    "AGENT_API_RETRY_SECONDS": ("api_retry_seconds", parse_float_range(0, 86400)),
    "AGENT_API_TIMEOUT_SECONDS": ("api_timeout_seconds", parse_float_range(1, 600)),
    "AGENT_USE_POOL": ("use_pool", parse_bool),
    "AGENT_EXIT_WHEN_IDLE": ("exit_when_idle", parse_bool),
    "AGENT_MAX_DEQUEUE_COUNT": ("max_dequeue_count", parse_int_range(1, 1000)),
    "AGENT_SCHEDULED_EVENTS_URL": ("scheduled_events_url", _url),
    "AGENT_SCHEDULED_EVENTS_SECONDS": ("scheduled_events_seconds", parse_float_range(0.1, 60)),
    "AGENT_PACKAGE_CONTAINER": ("package_container", parse_container_name),
    "AGENT_INSTALL_DIR": ("install_dir", lambda raw: Path(parse_text(raw)).expanduser()),
    "AGENT_UPGRADE_CHECK_SECONDS": ("upgrade_check_seconds", parse_float_range(1, 7 * 86400)),
}
REQUIRED = ("AGENT_VM_NAME", "AGENT_API_BASE_URL", "AGENT_ACTIONS")
STORAGE_KEYS = ("AGENT_STORAGE_CONNECTION", STORAGE_NAME)
_STORAGE_SUFFIXES = ("blobServiceUri", "queueServiceUri", "tableServiceUri", "accountName",
                     "credential", "clientId")


def variable_names() -> list[str]:
    """Every variable the agent reads (for docs and deployment checks)."""
    storage = [f"{STORAGE_NAME}__{suffix}" for suffix in _STORAGE_SUFFIXES]
    return ["AGENT_CONFIG", "AGENT_LOG_LEVEL", *STORAGE_KEYS, *storage, *_FIELDS]


def _env_lines(text: str, path: Path) -> dict[str, str]:
    """`NAME=VALUE` lines, the value taken verbatim (JSON keeps its quotes); `#` comments."""
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("export "):
            stripped = stripped[len("export "):].lstrip()
        name, sep, value = stripped.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name.strip()):
            raise ConfigError("AGENT_CONFIG", f"{path} line {number} is not NAME=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name.strip()] = value
    return values


def _file_values(path_text: str) -> tuple[dict[str, str], dict[str, str]]:
    """Read the `AGENT_CONFIG` file: (AGENT_* values as text, other variables it sets).

    `.json` and `.toml` hold an object of AGENT_* names; any other name is read as an env file
    (`NAME=VALUE` lines) whose non-AGENT_ names (say `AZURE_CLIENT_ID`) are passed on.
    """
    path = Path(path_text).expanduser()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError("AGENT_CONFIG", f"cannot read {path}: {exc.strerror}") from None
    suffix = path.suffix.lower()
    kind = {".toml": "TOML", ".json": "JSON"}.get(suffix, "env file")
    try:
        if kind == "TOML":
            body: Any = tomllib.loads(raw.decode())
        elif kind == "JSON":
            body = json.loads(raw)
        else:
            body = _env_lines(raw.decode(), path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError("AGENT_CONFIG", f"{path} is not valid {kind}: {exc}") from None
    if not isinstance(body, dict):
        raise ConfigError("AGENT_CONFIG", f"{path} must hold an object of AGENT_* names")
    known = set(variable_names()) - {"AGENT_CONFIG"}
    values: dict[str, str] = {}
    extra: dict[str, str] = {}
    for name, value in body.items():
        if kind == "env file" and not name.startswith("AGENT_"):
            extra[name] = value
            continue
        if name not in known:
            raise ConfigError("AGENT_CONFIG", f"{path}: unknown name {name!r}")
        if isinstance(value, (dict, list)):
            values[name] = json.dumps(value)
        elif isinstance(value, bool) or value is None:
            raise ConfigError(name, f"expected text or a number in {path}, got {value!r}")
        else:
            values[name] = str(value)
    return values, extra


def load(env: Mapping[str, str] | None = None) -> AgentConfig:
    """Build the configuration from `env` (default: the process environment) and its file."""
    source = dict(os.environ if env is None else env)
    merged: dict[str, str] = {}
    extra: dict[str, str] = {}
    if (source.get("AGENT_CONFIG") or "").strip():
        file_values, extra = _file_values(source["AGENT_CONFIG"].strip())
        merged.update(file_values)
    merged.update({k: v for k, v in source.items() if k.startswith("AGENT_")})

    values: dict[str, Any] = {}
    for name, (attr, parse) in _FIELDS.items():
        raw = merged.get(name)
        if raw is None or not raw.strip():
            if name in REQUIRED:
                raise ConfigError(name, "is required but not set")
            continue
        try:
            values[attr] = parse(raw)
        except ValueError as exc:
            raise ConfigError(name, str(exc)) from None
    if "work_dir" not in values:  # one folder per VM name: local agents share a machine
        values["work_dir"] = Path(tempfile.gettempdir()) / "vmpool-agent" / values["vm_name"]
    values["storage"] = _storage(merged)
    values["extra_env"] = {k: v for k, v in extra.items() if k not in source}
    config = AgentConfig(**values)
    if bool(config.package_container) != (config.install_dir is not None):
        raise ConfigError("AGENT_INSTALL_DIR", "self-upgrade needs both AGENT_PACKAGE_CONTAINER "
                          "and AGENT_INSTALL_DIR (or neither)")
    if config.poll_min_seconds > config.poll_max_seconds:
        raise ConfigError("AGENT_POLL_MIN_SECONDS", "must not exceed AGENT_POLL_MAX_SECONDS")
    return config


def _storage(merged: Mapping[str, str]) -> StorageConnection:
    """`AGENT_STORAGE_CONNECTION` (a connection string) or identity-based `AGENT_STORAGE__*`."""
    conn_env = {k: v for k, v in merged.items() if k.startswith(f"{STORAGE_NAME}__")}
    text = (merged.get("AGENT_STORAGE_CONNECTION") or merged.get(STORAGE_NAME) or "").strip()
    if text:
        conn_env[STORAGE_NAME] = text
    elif not any(v.strip() for v in conn_env.values()):
        raise ConfigError("AGENT_STORAGE_CONNECTION",
                          f"is required: a connection string, or identity-based "
                          f"{STORAGE_NAME}__blobServiceUri/__queueServiceUri/__tableServiceUri "
                          f"(or {STORAGE_NAME}__accountName) with {STORAGE_NAME}__credential")
    try:
        return StorageConnection.from_env(STORAGE_NAME, conn_env)
    except StorageConfigError as exc:
        name = "AGENT_STORAGE_CONNECTION" if exc.name == STORAGE_NAME else exc.name
        message = str(exc).split(": ", 1)[1].replace(
            f"set {STORAGE_NAME} to a connection string", "set AGENT_STORAGE_CONNECTION")
        raise ConfigError(name, message) from None
