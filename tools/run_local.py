"""`make run`: the local stack. Starts Azurite on its default ports and creates the app's
containers, queues and tables, then waits for Ctrl-C.
"""
from __future__ import annotations

import json
import os
import sys
import time

from shared.settings import SettingError, Settings
from shared.storage import StorageConnection, ensure_resources
from tools.azurite import PROJECT_ROOT, Azurite, AzuriteError, port_open


def load_local_settings() -> dict[str, str]:
    data = json.loads((PROJECT_ROOT / "local.settings.json").read_text())
    return {k: str(v) for k, v in data.get("Values", {}).items()}


def main() -> int:
    env = {**load_local_settings(), **os.environ}
    try:
        settings = Settings.from_env(env)
    except SettingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    azurite = None
    if port_open(10000):
        print("Azurite (or another storage emulator) already listens on 10000; using it.")
    else:
        try:
            azurite = Azurite.start(PROJECT_ROOT / ".azurite", ports=(10000, 10001, 10002))
        except AzuriteError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print("Azurite started on 127.0.0.1:10000 (blob), 10001 (queue), 10002 (table).")
    try:
        conn = StorageConnection.from_env(settings.storage_connection, env)
        created = ensure_resources(settings, conn)
        print(f"Storage ready: {json.dumps(created)}")
        print("The function host is not part of the local stack yet; press Ctrl-C to stop.")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\nStopping.")
    finally:
        if azurite is not None:
            azurite.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
