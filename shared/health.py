"""What `GET /api/health` reports: settings valid and storage reachable."""
from __future__ import annotations

from typing import Any

from shared.settings import SettingError, Settings
from shared.storage import StorageConfigError, StorageConnection

VERSION = "0.1.0"


def check_health(env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """Return (HTTP status, body). 503 names the failing check without a stack trace."""
    checks: dict[str, str] = {}
    try:
        settings = Settings.from_env(env)
        checks["settings"] = "ok"
    except SettingError as exc:
        checks["settings"] = str(exc)
        return 503, {"status": "unhealthy", "version": VERSION, "checks": checks}
    try:
        conn = StorageConnection.from_env(settings.storage_connection, env)
        conn.blob_service().get_container_client(settings.data_container).exists(timeout=5)
        checks["storage"] = "ok"
    except StorageConfigError as exc:
        checks["storage"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - any storage failure means unhealthy
        checks["storage"] = f"unreachable: {type(exc).__name__}"
    healthy = all(v == "ok" for v in checks.values())
    return (200 if healthy else 503), {
        "status": "healthy" if healthy else "unhealthy", "version": VERSION, "checks": checks}
