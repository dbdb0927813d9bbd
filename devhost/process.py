"""Run the local host in a child process (`python -m devhost start`), e.g. from tests.

A child process gives full isolation (environment, imported modules, the durable SDK's
per-process HTTP session); `stop()` sends SIGINT like Ctrl+C and returns the exit code.
Strict indexing is on by default: `/admin/host/ping` answers as soon as the host serves,
even with an app that failed to index, so a broken app must make the child exit instead,
and `start()` then fails at once with the child's output.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class HostProcessError(RuntimeError):
    """The child host exited early or did not answer in time."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DevHostProcess:
    """`python -m devhost start` for `script_root` on `port` (a free one by default);
    `enable_auth` adds `--enable-auth` (keys checked as on Azure); `strict` (default)
    adds `--strict-indexing`: an app that fails to index stops the child."""

    def __init__(self, script_root: str | Path, env: Mapping[str, str] | None = None,
                 port: int | None = None, enable_auth: bool = False,
                 strict: bool = True) -> None:
        self.script_root = Path(script_root).resolve()
        self.port = port or free_port()
        self.env = dict(env or {})
        self.enable_auth = enable_auth
        self.strict = strict
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="devhost-", suffix=".log", delete=False)  # noqa: SIM115
        self.returncode: int | None = None
        self._final_output: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        """Everything the child printed so far (stdout and stderr)."""
        if self._final_output is not None:
            return self._final_output
        return Path(self._log.name).read_text(errors="replace")

    def start(self, timeout: float = 60.0) -> DevHostProcess:
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "devhost", "start", "--script-root", str(self.script_root),
             "--port", str(self.port), *(["--enable-auth"] if self.enable_auth else []),
             *(["--strict-indexing"] if self.strict else [])],
            cwd=PROJECT_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise HostProcessError(f"devhost exited with {self.process.returncode}:\n"
                                       f"{self.output()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/admin/host/ping", timeout=1):
                    return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.kill()
        raise HostProcessError(f"devhost did not answer within {timeout}s:\n"
                               f"{self.output()[-4000:]}")

    def stop(self, timeout: float = 60.0, sig: int = signal.SIGINT) -> int:
        """Send `sig` (Ctrl+C by default), then wait; returns the exit code (SIGKILL after
        `timeout`)."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.returncode = self.process.returncode
        return self.returncode

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> DevHostProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop (if still running) and remove the log file; `output()` keeps working."""
        self.stop()
        if self._final_output is None:
            self._final_output = self.output()
            self._log.close()
            os.unlink(self._log.name)
