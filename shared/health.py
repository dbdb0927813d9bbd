"""What `GET /api/health` reports: settings valid and storage (blob, queue, table) reachable.

It answers within `DEADLINE_S` whatever storage does: the three probes run side by side on
threads, each with a short client timeout and no SDK retries, and a probe that has not answered
by the deadline counts as down (its thread is left to finish on its own).
"""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from shared.settings import SettingError, Settings
from shared.storage import StorageConfigError, StorageConnection

VERSION = "0.1.0"
DEADLINE_S = 4.0  # under the 5 s a load balancer or an operator waits
PROBE_TIMEOUT_S = 2  # per network call of a probe
# Probes outlive a request that gave up on them; a few spare threads keep a hung storage
# from starving the next health check.
_probes = ThreadPoolExecutor(max_workers=12, thread_name_prefix="health")
_FAST = {"retry_total": 0, "connection_timeout": PROBE_TIMEOUT_S,
         "read_timeout": PROBE_TIMEOUT_S}


def _probe_blob(conn: StorageConnection, settings: Settings) -> None:
    client = conn.blob_service().get_container_client(settings.data_container)
    client.get_container_properties(timeout=PROBE_TIMEOUT_S, **_FAST)


def _probe_queue(conn: StorageConnection, settings: Settings) -> None:
    conn.queue_service().get_queue_client(settings.work_queue).get_queue_properties(
        timeout=PROBE_TIMEOUT_S, **_FAST)


def _probe_table(conn: StorageConnection, settings: Settings) -> None:
    table = conn.table_service().get_table_client(settings.vm_table)
    next(iter(table.query_entities("PartitionKey eq 'health'", results_per_page=1, **_FAST)),
         None)


PROBES = {"blob": _probe_blob, "queue": _probe_queue, "table": _probe_table}


def check_health(env: dict[str, str] | None = None,
                 deadline_s: float = DEADLINE_S) -> tuple[int, dict[str, Any]]:
    """Return (HTTP status, body) within `deadline_s`. 503 names what is down, without a
    stack trace."""
    checks: dict[str, str] = {}
    try:
        settings = Settings.from_env(env)
        checks["settings"] = "ok"
    except SettingError as exc:
        checks["settings"] = str(exc)
        return 503, {"status": "unhealthy", "version": VERSION, "checks": checks}
    try:
        conn = StorageConnection.from_env(settings.storage_connection, env)
    except StorageConfigError as exc:
        checks["storage"] = str(exc)
        return 503, {"status": "unhealthy", "version": VERSION, "checks": checks}
    end = time.monotonic() + deadline_s
    futures: dict[str, Future] = {name: _probes.submit(probe, conn, settings)
                                  for name, probe in PROBES.items()}
    for name, future in futures.items():
        try:
            future.result(timeout=max(0.0, end - time.monotonic()))
            checks[f"storage.{name}"] = "ok"
        except ResourceNotFoundError:  # it answered: reachable (resources are made at start)
            checks[f"storage.{name}"] = "ok"
        except FutureTimeout:
            checks[f"storage.{name}"] = f"unreachable: no answer within {deadline_s:g}s"
        except Exception as exc:  # noqa: BLE001 - any storage failure means unhealthy
            checks[f"storage.{name}"] = f"unreachable: {type(exc).__name__}"
    healthy = all(v == "ok" for v in checks.values())
    return (200 if healthy else 503), {
        "status": "healthy" if healthy else "unhealthy", "version": VERSION, "checks": checks}
