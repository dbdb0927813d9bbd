"""Start and stop a private Azurite (blob, queue, table) from the project's node_modules."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from shared.storage import azurite_connection_string

PROJECT_ROOT = Path(__file__).resolve().parent.parent
AZURITE_BIN = PROJECT_ROOT / "node_modules" / ".bin" / "azurite"


class AzuriteError(RuntimeError):
    """Azurite is not installed or did not come up."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Azurite:
    """A running Azurite process; `connection_string` points the SDK clients at it."""

    location: Path
    blob_port: int
    queue_port: int
    table_port: int
    process: subprocess.Popen | None = None

    @property
    def connection_string(self) -> str:
        return azurite_connection_string("127.0.0.1", self.blob_port, self.queue_port,
                                         self.table_port)

    @classmethod
    def start(cls, location: Path, ports: tuple[int, int, int] | None = None,
              timeout: float = 30.0, access_log: bool = False) -> Azurite:
        """Start Azurite on `location`; with `access_log` it writes a line per request to
        `azurite.log` (what the throughput benchmark counts), otherwise it stays silent."""
        if not AZURITE_BIN.exists():
            raise AzuriteError(f"{AZURITE_BIN} is missing: run `make install` (npm ci)")
        blob, queue, table = ports or (free_port(), free_port(), free_port())
        location.mkdir(parents=True, exist_ok=True)
        log = open(location / "azurite.log", "ab")  # noqa: SIM115 - lives as long as the process
        process = subprocess.Popen(
            [str(AZURITE_BIN), *([] if access_log else ["--silent"]), "--disableTelemetry",
             "--skipApiVersionCheck",
             "--location", str(location), "--blobHost", "127.0.0.1", "--queueHost", "127.0.0.1",
             "--tableHost", "127.0.0.1", "--blobPort", str(blob), "--queuePort", str(queue),
             "--tablePort", str(table)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        log.close()
        instance = cls(location, blob, queue, table, process)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AzuriteError(
                    f"azurite exited with {process.returncode}: "
                    f"{(location / 'azurite.log').read_text(errors='replace')[-2000:]}")
            if all(port_open(p) for p in (blob, queue, table)):
                return instance
            time.sleep(0.1)
        instance.stop()
        raise AzuriteError(f"azurite did not open ports {blob}/{queue}/{table} in {timeout}s")

    def wait_saved(self, names: Iterable[str], timeout: float = 30.0) -> None:
        """Wait until Azurite's data folder holds every one of `names` (containers, blobs,
        tables, queues).

        Azurite keeps its metadata in memory and writes it to `__azurite_db_*.json` on a 5 s
        timer (LokiJS autosave), so a SIGKILL loses whatever the last save did not hold, even
        containers it acknowledged. Real storage never drops an acknowledged write; a test that
        kills Azurite to stage an outage waits here first, so it tests the outage and not that
        window.
        """
        wanted = set(names)
        deadline = time.monotonic() + timeout
        while True:
            saved = "".join(p.read_text(errors="replace")
                            for p in self.location.glob("__azurite_db_*.json"))
            missing = sorted(n for n in wanted if json.dumps(n) not in saved)
            if not missing:
                return
            if time.monotonic() > deadline:
                raise AzuriteError(f"azurite did not save {missing} in {timeout}s")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def wipe(self) -> None:
        self.stop()
        shutil.rmtree(self.location, ignore_errors=True)
