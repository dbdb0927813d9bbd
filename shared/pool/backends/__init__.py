"""Pool backends and the factory that picks one from `POOL_BACKEND`."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shared.pool.backends.base import (
    POWER_STATES,
    BackendError,
    CapacityUnavailable,
    InvalidOperation,
    Operation,
    OperationInProgress,
    OperationStatus,
    PoolBackend,
    Throttled,
    VmNotFound,
)
from shared.pool.registry import PoolRegistry
from shared.settings import Settings

__all__ = ["POWER_STATES", "BackendError", "CapacityUnavailable", "InvalidOperation",
           "Operation", "OperationInProgress", "OperationStatus", "PoolBackend", "Throttled",
           "VmNotFound",
           "local_agent_env", "local_state_dir", "make_backend", "provisioning_defaults"]

_STORAGE_SUFFIXES = ("blobServiceUri", "queueServiceUri", "tableServiceUri", "accountName",
                     "credential", "clientId")


def provisioning_defaults(settings: Settings) -> dict[str, Any]:
    """What a new azure pool VM gets unless a pool change says otherwise."""
    return {"location": settings.pool_location, "vm_size": settings.pool_vm_size,
            "image": settings.pool_vm_image, "subnet_id": settings.pool_subnet_id,
            "admin_username": settings.pool_admin_username,
            "ssh_public_key": settings.pool_ssh_public_key,
            "public_ip": settings.pool_public_ip, "max_price": settings.pool_spot_max_price}


def local_state_dir(settings: Settings) -> Path:
    """Where the local backend keeps pid files and logs (one folder per task hub by default)."""
    if settings.local_state_dir:
        return Path(settings.local_state_dir)
    return Path(tempfile.gettempdir()) / f"vmpool-{settings.taskhub_name}"


def local_agent_env(settings: Settings, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The `AGENT_*` environment of a local agent: pass-through values, then the app's own.

    The storage connection is the app's: a connection string as `AGENT_STORAGE_CONNECTION`, or
    its identity-based parts as `AGENT_STORAGE__*`.
    """
    source = os.environ if env is None else env
    out = {k: v for k, v in source.items() if k.startswith("AGENT_")}
    conn_name = settings.storage_connection
    conn = (source.get(conn_name) or "").strip()
    if conn:
        out["AGENT_STORAGE_CONNECTION"] = conn
    else:
        for suffix in _STORAGE_SUFFIXES:
            value = source.get(f"{conn_name}__{suffix}")
            if value:
                out[f"AGENT_STORAGE__{suffix}"] = value
    out.update({
        "AGENT_API_BASE_URL": settings.local_agent_api_base_url,
        "AGENT_SLOTS": str(settings.vm_slots),
        "AGENT_WORK_QUEUE": settings.work_queue,
        "AGENT_RESULTS_CONTAINER": settings.results_container,
        "AGENT_CLAIM_TABLE": settings.claim_table,
        "AGENT_VM_TABLE": settings.vm_table,
    })
    if settings.local_agent_function_key:
        out["AGENT_FUNCTION_KEY"] = settings.local_agent_function_key
    else:
        out.setdefault("AGENT_FUNCTION_KEY", "")
    return out


def make_backend(settings: Settings, registry: PoolRegistry | None = None,
                 credential: Any = None, env: Mapping[str, str] | None = None,
                 **client_options: Any) -> PoolBackend:
    """The backend `POOL_BACKEND` names, configured from `settings`."""
    if settings.pool_backend == "azure":
        from shared.pool.backends.azure import AzureBackend  # noqa: PLC0415 - SDK import cost
        from shared.pool.vmspec import agent_settings_from  # noqa: PLC0415

        return AzureBackend(settings.azure_subscription_id, settings.pool_resource_group,
                            credential=credential, arm_endpoint=settings.arm_endpoint,
                            provisioning=provisioning_defaults(settings),
                            agent=agent_settings_from(settings, os.environ if env is None
                                                      else env),
                            **client_options)
    if settings.pool_backend == "local":
        from shared.pool.backends.local import LocalBackend, parse_command  # noqa: PLC0415

        return LocalBackend(local_state_dir(settings), parse_command(settings.local_agent_command),
                            agent_env=local_agent_env(settings, env),
                            stop_grace_s=settings.local_stop_grace_seconds,
                            base_env=env, boot_s=settings.local_boot_seconds,
                            deallocate_s=settings.local_deallocate_seconds)
    if settings.pool_backend == "external":
        from shared.pool.backends.external import ExternalBackend  # noqa: PLC0415

        if registry is None:
            raise ValueError("the external backend reads heartbeats: pass the pool registry")
        return ExternalBackend(registry, settings.heartbeat_timeout_seconds)
    raise ValueError(f"unknown pool backend {settings.pool_backend!r}")
