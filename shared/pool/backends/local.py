"""The `local` backend: each pool VM is an agent process on this machine.

`start` spawns the agent with its `AGENT_*` environment and writes its pid to a file in a state
folder, so another process (the function host, a second scaler) sees the same "VMs". `deallocate`
asks the agent to drain and stop (SIGTERM) and, if it is still there after a grace period, kills
it (SIGKILL); neither call waits. A process that has exited is a deallocated VM.
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from shared.pool.backends.base import (
    DEALLOCATED,
    DEALLOCATING,
    RUNNING,
    BackendError,
    InvalidOperation,
    Operation,
    OperationInProgress,
    OperationStatus,
    PoolBackend,
    VmNotFound,
    now_s,
)
from shared.pool.members import InvalidVmName, validate_vm_name

_CHILDREN: dict[int, subprocess.Popen] = {}  # processes this interpreter spawned (for reaping)
_CHILDREN_LOCK = threading.Lock()


def parse_command(raw: str) -> list[str]:
    """`python -m agent` as argv; a leading `python` means this interpreter."""
    argv = shlex.split(raw)
    if not argv:
        raise ValueError("the agent command is empty")
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return argv


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start time) from /proc, or None where /proc is not available."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text[text.rfind(")") + 2:].split()
    return rest[0], rest[19]


class LocalBackend(PoolBackend):
    """Agent processes as VMs; state (pid files, logs, work folders) under `state_dir`."""

    name = "local"

    def __init__(self, state_dir: str | Path, command: Sequence[str],
                 agent_env: Mapping[str, str] | None = None, stop_grace_s: float = 30.0,
                 base_env: Mapping[str, str] | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.command = list(command)
        if not self.command:
            raise ValueError("the agent command is empty")
        self.agent_env = dict(agent_env or {})
        self.stop_grace_s = stop_grace_s
        self.base_env = dict(os.environ if base_env is None else base_env)

    # --- files -------------------------------------------------------------------------------

    def _pid_file(self, vm: str) -> Path:
        return self.state_dir / f"{vm}.json"

    def log_file(self, vm: str) -> Path:
        return self.state_dir / f"{vm}.log"

    def work_dir(self, vm: str) -> Path:
        return self.state_dir / vm / "work"

    def _read(self, vm: str) -> dict[str, Any] | None:
        try:
            info = json.loads(self._pid_file(vm).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # a torn or foreign file: treat as no process
        return info if isinstance(info, dict) and isinstance(info.get("pid"), int) else None

    def _write(self, vm: str, info: dict[str, Any]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._pid_file(vm).with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, self._pid_file(vm))

    def _clear(self, vm: str, pid: int) -> None:
        info = self._read(vm)
        if info and info["pid"] == pid:
            with contextlib.suppress(FileNotFoundError):
                self._pid_file(vm).unlink()

    # --- processes ---------------------------------------------------------------------------

    @staticmethod
    def _alive(info: dict[str, Any]) -> bool:
        pid = info["pid"]
        with _CHILDREN_LOCK:
            child = _CHILDREN.get(pid)
        if child is not None and child.poll() is not None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        except OSError:
            return False
        stat = _proc_stat(pid)
        if stat is None:
            return True
        state, started = stat
        if state in ("Z", "X"):
            return False
        return not info.get("proc_start") or info["proc_start"] == started

    @staticmethod
    def _exit_code(pid: int) -> int | None:
        with _CHILDREN_LOCK:
            child = _CHILDREN.get(pid)
        return None if child is None else child.poll()

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        try:
            if hasattr(os, "killpg"):
                os.killpg(pid, sig)  # the agent leads its own session: its children go too
            else:  # pragma: no cover - Windows
                os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(OSError):
                os.kill(pid, sig)

    def _escalate(self, vm: str, info: dict[str, Any]) -> None:
        """SIGKILL a process that ignored the stop request past the grace period."""
        asked = info.get("stop_requested_at")
        if asked is not None and now_s() - asked >= self.stop_grace_s and self._alive(info):
            self._signal(info["pid"], signal.SIGKILL)

    def _escalate_later(self, vm: str) -> None:
        def check() -> None:
            info = self._read(vm)
            if info:
                self._escalate(vm, info)

        timer = threading.Timer(self.stop_grace_s, check)
        timer.daemon = True
        timer.start()

    # --- the machines' own record of when they ran (what a cloud bills) ----------------------

    def power_log(self) -> Path:
        """`power.jsonl`: one line per start and per exit of an agent process."""
        return self.state_dir / "power.jsonl"

    def _log_power(self, vm: str, event: str, pid: int, at: float) -> None:
        line = json.dumps({"vm": vm, "event": event, "pid": pid, "at": at}) + "\n"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with _CHILDREN_LOCK, open(self.power_log(), "a") as log:
            log.write(line)

    def _reap(self, vm: str, proc: subprocess.Popen) -> None:
        proc.wait()
        self._log_power(vm, "exit", proc.pid, now_s())

    def power_events(self) -> list[dict[str, Any]]:
        try:
            lines = self.power_log().read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def stopped_at(self, vm: str) -> float | None:
        """The exit time of the VM's last agent process, if this process saw it exit."""
        exits = [e["at"] for e in self.power_events() if e["vm"] == vm and e["event"] == "exit"]
        return max(exits) if exits else None

    def _environment(self, vm: str) -> dict[str, str]:
        env = dict(self.base_env)
        env.update({k: v for k, v in self.agent_env.items() if v is not None})
        env.update({"AGENT_VM_NAME": vm, "AGENT_WORK_DIR": str(self.work_dir(vm))})
        return env

    # --- the backend -------------------------------------------------------------------------

    def start(self, vm: str) -> Operation:
        vm = _valid(vm)
        info = self._read(vm)
        if info and self._alive(info):
            if info.get("stop_requested_at") is not None:
                raise OperationInProgress(f"VM {vm!r} is stopping; start it once it has stopped")
            return Operation(self.name, "start", vm, token=str(info["pid"]),
                             started_at=info.get("started_at", now_s()))
        self.work_dir(vm).mkdir(parents=True, exist_ok=True)
        try:
            with open(self.log_file(vm), "ab") as log:
                proc = subprocess.Popen(
                    self.command, env=self._environment(vm), cwd=str(self.work_dir(vm)),
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True)
        except OSError as exc:
            raise BackendError(f"cannot start the agent for VM {vm!r} "
                               f"({shlex.join(self.command)}): {exc}") from None
        started = now_s()
        with _CHILDREN_LOCK:
            _CHILDREN[proc.pid] = proc
        self._log_power(vm, "start", proc.pid, started)
        threading.Thread(target=self._reap, args=(vm, proc), daemon=True,
                         name=f"reap-{vm}").start()
        stat = _proc_stat(proc.pid)
        self._write(vm, {"pid": proc.pid, "started_at": started,
                         "proc_start": stat[1] if stat else "", "stop_requested_at": None})
        return Operation(self.name, "start", vm, token=str(proc.pid), started_at=started)

    def deallocate(self, vm: str) -> Operation:
        vm = _valid(vm)
        info = self._read(vm)
        if not info or not self._alive(info):
            if info:
                self._clear(vm, info["pid"])
            return Operation(self.name, "deallocate", vm, started_at=now_s())
        if info.get("stop_requested_at") is None:
            info["stop_requested_at"] = now_s()
            self._write(vm, info)
            self._signal(info["pid"], signal.SIGTERM)
            self._escalate_later(vm)
        else:
            self._escalate(vm, info)
        return Operation(self.name, "deallocate", vm, token=str(info["pid"]),
                         started_at=info["stop_requested_at"])

    def power_state(self, vm: str) -> str:
        vm = _valid(vm)
        info = self._read(vm)
        if not info:
            return DEALLOCATED
        if not self._alive(info):
            self._clear(vm, info["pid"])
            return DEALLOCATED
        if info.get("stop_requested_at") is not None:
            self._escalate(vm, info)
            return DEALLOCATING
        return RUNNING

    def addresses(self, vm: str) -> dict[str, str | None]:
        _valid(vm)
        return {"private_ip": "127.0.0.1", "public_ip": None}

    def provision(self, spec: dict[str, Any]) -> Operation:
        vm = _valid(spec.get("name") if isinstance(spec, dict) else None)
        self.work_dir(vm).mkdir(parents=True, exist_ok=True)
        return Operation(self.name, "provision", vm, started_at=now_s())

    def delete(self, vm: str) -> Operation:
        vm = _valid(vm)
        info = self._read(vm)
        if info and self._alive(info):
            raise OperationInProgress(f"VM {vm!r} is running; deallocate it before deleting it")
        if info:
            self._clear(vm, info["pid"])
        return Operation(self.name, "delete", vm, started_at=now_s())

    def poll(self, operation: Operation) -> OperationStatus:
        self._check_own(operation)
        vm = _valid(operation.vm)
        if operation.kind in ("provision", "delete"):
            return OperationStatus(operation, done=True, succeeded=True, status="Succeeded")
        if operation.kind not in ("start", "deallocate"):
            raise InvalidOperation(f"unknown local operation {operation.kind!r}")
        pid = int(operation.token) if operation.token.isdigit() else None
        info = self._read(vm)
        alive = bool(info and self._alive(info) and (pid is None or info["pid"] == pid))
        if operation.kind == "start":
            if alive:
                return OperationStatus(operation, done=True, succeeded=True, status="Succeeded")
            code = self._exit_code(pid) if pid else None
            return OperationStatus(
                operation, done=True, succeeded=False, status="Failed",
                error=f"the agent for VM {vm!r} exited"
                      f"{'' if code is None else f' with code {code}'}; see {self.log_file(vm)}")
        if alive and info is not None:
            self._escalate(vm, info)
            return OperationStatus(operation, done=False, status="InProgress")
        if info and pid is not None and info["pid"] == pid:
            self._clear(vm, pid)
        return OperationStatus(operation, done=True, succeeded=True, status="Succeeded")


def _valid(vm: Any) -> str:
    try:
        return validate_vm_name(vm)
    except InvalidVmName as exc:
        raise VmNotFound(str(exc)) from None
