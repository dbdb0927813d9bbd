"""The `local` backend: each pool VM is an agent process on this machine.

`start` spawns the agent with its `AGENT_*` environment and writes its pid to a file in a state
folder, so another process (the function host, a second scaler) sees the same "VMs". `deallocate`
asks the agent to drain and stop (SIGTERM) and, if it is still there after a grace period, kills
it (SIGKILL); neither call waits. A process that has exited is a deallocated VM.

A real VM takes a while to boot and to deallocate. `boot_s` (LOCAL_BOOT_SECONDS) keeps a start
in progress (power state `starting`, its operation not done) that long before the agent is
launched; `deallocate_s` (LOCAL_DEALLOCATE_SECONDS) keeps a stopped VM `deallocating` until
that long after the request (or until the agent exits, if later). Both default to 0: the agent
starts at once and a VM is deallocated when its agent has exited. `power.jsonl` records when
each start was asked for and when each deallocation completed, so what the pool would be
billed can be read from the backend's own records.
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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from shared.pool.backends.base import (
    DEALLOCATED,
    DEALLOCATING,
    RUNNING,
    STARTING,
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

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: one process per state folder
    fcntl = None  # type: ignore[assignment]

_CHILDREN: dict[int, subprocess.Popen] = {}  # processes this interpreter spawned (for reaping)
_REAPERS: dict[int, threading.Thread] = {}  # their reapers, which record when each exited
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
                 base_env: Mapping[str, str] | None = None, boot_s: float = 0.0,
                 deallocate_s: float = 0.0) -> None:
        self.state_dir = Path(state_dir)
        self.command = list(command)
        if not self.command:
            raise ValueError("the agent command is empty")
        self.agent_env = dict(agent_env or {})
        self.stop_grace_s = stop_grace_s
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.boot_s = max(0.0, float(boot_s))
        self.deallocate_s = max(0.0, float(deallocate_s))

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
        """`power.jsonl`: one line per event of a VM's power, with its time (`at`):
        `start` (the start was asked for: billing begins), `launch` (the agent process began
        after the boot delay; with no delay `start` carries its pid), `stop` (deallocation
        asked for), `exit` (the agent process ended) and `deallocated` (the deallocation
        completed: billing ends)."""
        return self.state_dir / "power.jsonl"

    def _log_power(self, vm: str, event: str, pid: int | None, at: float) -> None:
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
        """When the VM's last deallocation completed (or its agent exited), if recorded."""
        ends = [e["at"] for e in self.power_events()
                if e["vm"] == vm and e["event"] in ("exit", "deallocated")]
        return max(ends) if ends else None

    def billed_intervals(self, until: float | None = None) -> dict[str, list[tuple[float, float]]]:
        """Per VM, (start, end) of every billed interval: from a start request to the
        deallocation that completed after it; one still open ends at `until` (default now)."""
        end_of_run = now_s() if until is None else until
        out: dict[str, list[tuple[float, float]]] = {}
        opened: dict[str, float] = {}
        for event in sorted(self.power_events(), key=lambda e: e["at"]):
            vm, kind = event["vm"], event["event"]
            if kind == "start" and vm not in opened:
                opened[vm] = event["at"]
            elif kind == "deallocated" and vm in opened:
                out.setdefault(vm, []).append((opened.pop(vm), event["at"]))
        for vm, began in opened.items():
            out.setdefault(vm, []).append((began, max(began, end_of_run)))
        return out

    def _environment(self, vm: str) -> dict[str, str]:
        env = dict(self.base_env)
        env.update({k: v for k, v in self.agent_env.items() if v is not None})
        env.update({"AGENT_VM_NAME": vm, "AGENT_WORK_DIR": str(self.work_dir(vm))})
        return env

    # --- one VM's life: booting, running, stopping, deallocated --------------------------

    @contextlib.contextmanager
    def _locked(self, vm: str) -> Iterator[None]:
        """One caller at a time looks at or changes a VM's file (across processes too): a
        boot that ends is launched exactly once, a deallocation completes exactly once."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / f"{vm}.lock", "a") as handle:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _spawn(self, vm: str, requested_at: float, event: str) -> dict[str, Any]:
        """Launch the agent process; its record keeps the start request's time."""
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
        launched = now_s()
        with _CHILDREN_LOCK:
            _CHILDREN[proc.pid] = proc
        self._log_power(vm, event, proc.pid, launched if event == "launch" else requested_at)
        reaper = threading.Thread(target=self._reap, args=(vm, proc), daemon=True,
                                  name=f"reap-{vm}")
        with _CHILDREN_LOCK:
            _REAPERS[proc.pid] = reaper
        reaper.start()
        stat = _proc_stat(proc.pid)
        info = {"pid": proc.pid, "started_at": requested_at, "proc_start": stat[1] if stat else "",
                "stop_requested_at": None}
        self._write(vm, info)
        return info

    def _exited_at(self, vm: str, pid: int) -> float | None:
        with _CHILDREN_LOCK:
            reaper = _REAPERS.pop(pid, None)
        if reaper is not None:
            reaper.join(timeout=5.0)  # our child: its exit is being written down
        exits = [e["at"] for e in self.power_events()
                 if e["vm"] == vm and e["event"] == "exit" and e["pid"] == pid]
        return max(exits) if exits else None

    def _complete(self, vm: str, info: dict[str, Any], not_before: float) -> None:
        """The VM is deallocated: record when (not before the deallocation delay is over,
        nor before its agent exited) and forget its process."""
        pid = info["pid"]
        exited = self._exited_at(vm, pid) if pid > 0 else None
        if pid > 0 and exited is None:
            exited = now_s()  # not our child: it was seen gone just now
        self._log_power(vm, "deallocated", pid or None, max(not_before, exited or not_before))
        self._clear(vm, pid)

    def _phase(self, vm: str, info: dict[str, Any] | None) -> str:
        """Where the VM stands now (the caller holds `_locked`): a boot whose delay is over
        launches its agent here, a stop whose delay is over and whose agent is gone completes
        here."""
        if not info:
            return DEALLOCATED
        now = now_s()
        stop = info.get("stop_requested_at")
        if info["pid"] == 0 and stop is None:  # booting
            if now < float(info.get("boot_until") or 0.0):
                return STARTING
            try:
                info = self._spawn(vm, float(info["started_at"]), "launch")
            except BackendError as exc:
                with contextlib.suppress(OSError), open(self.log_file(vm), "a") as log:
                    log.write(f"{exc}\n")
                self._complete(vm, info, now)
                return DEALLOCATED
        alive = info["pid"] > 0 and self._alive(info)
        if stop is None:
            if alive:
                return RUNNING
            self._complete(vm, info, float(info.get("started_at") or now))  # it died
            return DEALLOCATED
        if alive:
            self._escalate(vm, info)
            return DEALLOCATING
        done_by = float(info.get("done_by") or stop)
        if now < done_by:
            return DEALLOCATING
        self._complete(vm, info, done_by)
        return DEALLOCATED

    def _launch_when_booted(self, vm: str) -> None:
        with self._locked(vm):
            self._phase(vm, self._read(vm))

    # --- the backend -------------------------------------------------------------------------

    def start(self, vm: str) -> Operation:
        vm = _valid(vm)
        with self._locked(vm):
            phase = self._phase(vm, self._read(vm))
            info = self._read(vm)
            if phase == DEALLOCATING:
                raise OperationInProgress(f"VM {vm!r} is stopping; start it once it has stopped")
            if info and phase in (RUNNING, STARTING):
                return Operation(self.name, "start", vm, token=str(info["pid"] or ""),
                                 started_at=info.get("started_at", now_s()))
            requested = now_s()
            if self.boot_s <= 0:
                info = self._spawn(vm, requested, "start")
                return Operation(self.name, "start", vm, token=str(info["pid"]),
                                 started_at=requested)
            self._write(vm, {"pid": 0, "started_at": requested,
                             "boot_until": requested + self.boot_s, "stop_requested_at": None})
            self._log_power(vm, "start", None, requested)
        # The agent is launched when the boot is over: by this timer, or by whoever looks at
        # the VM first after that (another process, or this one if the timer is late).
        timer = threading.Timer(self.boot_s, self._launch_when_booted, args=(vm,))
        timer.daemon = True
        timer.start()
        return Operation(self.name, "start", vm, started_at=requested)

    def deallocate(self, vm: str) -> Operation:
        vm = _valid(vm)
        with self._locked(vm):
            if self._phase(vm, self._read(vm)) == DEALLOCATED:
                return Operation(self.name, "deallocate", vm, started_at=now_s())
            info = self._read(vm)
            assert info is not None  # not deallocated: its file is there
            pid = info["pid"]
            if info.get("stop_requested_at") is None:
                asked = now_s()
                info["stop_requested_at"] = asked
                info["done_by"] = asked + self.deallocate_s
                self._write(vm, info)
                self._log_power(vm, "stop", pid or None, asked)
                if pid > 0:
                    self._signal(pid, signal.SIGTERM)
                    self._escalate_later(vm)
            elif pid > 0:
                self._escalate(vm, info)
            return Operation(self.name, "deallocate", vm, token=str(pid or ""),
                             started_at=info["stop_requested_at"])

    def power_state(self, vm: str) -> str:
        vm = _valid(vm)
        with self._locked(vm):
            return self._phase(vm, self._read(vm))

    def addresses(self, vm: str) -> dict[str, str | None]:
        _valid(vm)
        return {"private_ip": "127.0.0.1", "public_ip": None}

    def provision(self, spec: dict[str, Any]) -> Operation:
        vm = _valid(spec.get("name") if isinstance(spec, dict) else None)
        self.work_dir(vm).mkdir(parents=True, exist_ok=True)
        return Operation(self.name, "provision", vm, started_at=now_s())

    def delete(self, vm: str) -> Operation:
        vm = _valid(vm)
        with self._locked(vm):
            if self._phase(vm, self._read(vm)) != DEALLOCATED:
                raise OperationInProgress(
                    f"VM {vm!r} is running; deallocate it before deleting it")
        return Operation(self.name, "delete", vm, started_at=now_s())

    def poll(self, operation: Operation) -> OperationStatus:
        self._check_own(operation)
        vm = _valid(operation.vm)
        if operation.kind in ("provision", "delete"):
            return OperationStatus(operation, done=True, succeeded=True, status="Succeeded")
        if operation.kind not in ("start", "deallocate"):
            raise InvalidOperation(f"unknown local operation {operation.kind!r}")
        pid = int(operation.token) if operation.token.isdigit() else None
        with self._locked(vm):
            phase = self._phase(vm, self._read(vm))
            info = self._read(vm)
        if operation.kind == "deallocate":
            if phase == DEALLOCATING:
                return OperationStatus(operation, done=False, status="InProgress")
            return OperationStatus(operation, done=True, succeeded=True, status="Succeeded")
        if phase == STARTING:
            return OperationStatus(operation, done=False, status="InProgress")
        ours = info is not None and (pid is None or info["pid"] == pid)
        if ours and phase in (RUNNING, DEALLOCATING) and info and info["pid"] > 0:
            return OperationStatus(operation, done=True, succeeded=True, status="Succeeded")
        code = self._exit_code(pid) if pid else None
        return OperationStatus(
            operation, done=True, succeeded=False, status="Failed",
            error=f"the agent for VM {vm!r} exited"
                  f"{'' if code is None else f' with code {code}'}; see {self.log_file(vm)}")


def _valid(vm: Any) -> str:
    try:
        return validate_vm_name(vm)
    except InvalidVmName as exc:
        raise VmNotFound(str(exc)) from None
