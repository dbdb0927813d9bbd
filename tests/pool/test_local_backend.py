"""The local backend with a stand-in agent program: spawn, pid file, drain, kill, death, and the
boot and deallocation delays that let it stand in for real VMs' timings."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.pool.backends import (
    BackendError,
    InvalidOperation,
    Operation,
    OperationInProgress,
    VmNotFound,
    local_agent_env,
    make_backend,
)
from shared.pool.backends.local import LocalBackend, parse_command
from shared.pool.registry import PoolRegistry, VmState
from shared.settings import Settings
from tools.polling import poll

ROOT = Path(__file__).resolve().parents[2]
STANDIN = Path(__file__).with_name("standin_agent.py")


def wait_for(check: Callable[[], object], what: str, limit_s: float = 30.0) -> object:
    """Poll `check` until it is truthy (bounded; the limit only guards against hangs)."""
    value = poll(check, limit_s)
    if not value:
        raise AssertionError(f"gave up waiting for {what}")
    return value


@pytest.fixture()
def make_local(tmp_path: Path) -> Iterator[Callable[..., LocalBackend]]:
    made: list[LocalBackend] = []

    def make(env: dict[str, str] | None = None, grace: float = 5.0,
             command: list[str] | None = None, boot_s: float = 0.0,
             deallocate_s: float = 0.0) -> LocalBackend:
        backend = LocalBackend(tmp_path / "state", command or [sys.executable, str(STANDIN)],
                               agent_env={"AGENT_API_BASE_URL": "http://127.0.0.1:1/api",
                                          **(env or {})},
                               stop_grace_s=grace, boot_s=boot_s, deallocate_s=deallocate_s)
        made.append(backend)
        return backend

    yield make
    for backend in made:  # never leave a stand-in behind
        for pid_file in backend.state_dir.glob("*.json"):
            vm = pid_file.stem
            if backend.power_state(vm) != "deallocated":
                backend.stop_grace_s = backend.deallocate_s = 0
                backend.deallocate(vm)
                wait_for(lambda vm=vm, b=backend: b.power_state(vm) == "deallocated", "cleanup")


def test_start_spawns_the_agent_with_its_environment(make_local, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("AGENT_EXTRA_KNOB", "passed-through")
    backend = make_local(env={"AGENT_SLOTS": "3"})
    op = backend.start("vm01")
    assert (op.kind, op.vm) == ("start", "vm01")
    env_file = backend.work_dir("vm01") / "env.json"
    wait_for(env_file.exists, "the stand-in to write its environment")
    env = json.loads(env_file.read_text())
    assert env["AGENT_VM_NAME"] == "vm01"
    assert env["AGENT_SLOTS"] == "3"
    assert env["AGENT_WORK_DIR"] == str(backend.work_dir("vm01"))
    assert env["AGENT_EXTRA_KNOB"] == "passed-through"
    assert backend.power_state("vm01") == "running"
    assert backend.poll(op).succeeded
    pid = json.loads((backend.state_dir / "vm01.json").read_text())["pid"]
    assert pid == int(op.token)
    # starting again while it runs is a no-op returning the same process
    assert backend.start("vm01").token == op.token


def test_another_process_sees_the_same_vms(make_local) -> None:  # noqa: ANN001
    backend = make_local()
    backend.start("vm01")
    code = ("import sys; from shared.pool.backends.local import LocalBackend; "
            f"b = LocalBackend({str(backend.state_dir)!r}, ['unused']); "
            "print(b.power_state('vm01'), b.power_state('vm02'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout.split()
    assert out == ["running", "deallocated"]


def test_deallocate_drains_without_blocking(make_local) -> None:  # noqa: ANN001
    backend = make_local()
    backend.start("vm01")
    ready = backend.work_dir("vm01") / "ready"
    wait_for(ready.exists, "the stand-in to be ready")
    op = backend.deallocate("vm01")
    assert op.kind == "deallocate"
    wait_for(lambda: backend.power_state("vm01") == "deallocated", "the agent to stop")
    assert (backend.work_dir("vm01") / "drained").exists()  # it got SIGTERM and drained
    final = backend.poll(op)
    assert final.done and final.succeeded
    assert not (backend.state_dir / "vm01.json").exists()


def test_an_agent_ignoring_sigterm_is_killed_after_the_grace(make_local) -> None:  # noqa: ANN001
    backend = make_local(env={"AGENT_STANDIN_IGNORE_TERM": "1"}, grace=0.3)
    backend.start("vm01")
    wait_for((backend.work_dir("vm01") / "ready").exists, "the stand-in to be ready")
    backend.deallocate("vm01")
    wait_for((backend.work_dir("vm01") / "term-ignored").exists, "SIGTERM to arrive")
    wait_for(lambda: backend.power_state("vm01") == "deallocated", "SIGKILL after the grace")
    assert not (backend.work_dir("vm01") / "drained").exists()


def test_start_while_stopping_is_operation_in_progress(make_local) -> None:  # noqa: ANN001
    backend = make_local(env={"AGENT_STANDIN_IGNORE_TERM": "1"}, grace=60)
    backend.start("vm01")
    wait_for((backend.work_dir("vm01") / "ready").exists, "the stand-in to be ready")
    op = backend.deallocate("vm01")  # returns while the agent is still there
    assert backend.power_state("vm01") == "deallocating"
    assert backend.poll(op).done is False
    with pytest.raises(OperationInProgress, match="vm01.*stopping"):
        backend.start("vm01")
    with pytest.raises(OperationInProgress, match="deallocate it before deleting"):
        backend.delete("vm01")


def test_a_dead_agent_is_a_deallocated_vm_and_a_failed_start(make_local) -> None:  # noqa: ANN001
    backend = make_local(env={"AGENT_STANDIN_EXIT": "3"})
    op = backend.start("vm01")
    wait_for(lambda: backend.power_state("vm01") == "deallocated", "the agent to exit")
    status = backend.poll(op)
    assert (status.done, status.succeeded) == (True, False)
    assert "exited with code 3" in status.error and "vm01.log" in status.error


def test_errors(make_local, tmp_path: Path) -> None:  # noqa: ANN001
    backend = make_local(command=[str(tmp_path / "no-such-program")])
    with pytest.raises(BackendError, match="cannot start the agent for VM 'vm01'"):
        backend.start("vm01")
    assert backend.power_state("vm01") == "deallocated"
    assert not (backend.state_dir / "vm01.json").exists()
    with pytest.raises(VmNotFound, match="not a valid VM name"):
        backend.start("../escape")
    with pytest.raises(InvalidOperation):
        backend.poll(Operation("azure", "start", "vm01"))
    with pytest.raises(ValueError, match="empty"):
        parse_command("   ")
    assert parse_command("python -m agent")[0] == sys.executable


def test_factory_builds_the_local_backend_from_settings(
        storage_env: dict[str, str], tmp_path: Path) -> None:
    env = {**storage_env, "POOL_BACKEND": "local", "LOCAL_STATE_DIR": str(tmp_path),
           "LOCAL_AGENT_COMMAND": "python -m agent --once", "VM_SLOTS": "2",
           "LOCAL_AGENT_FUNCTION_KEY": "k1", "AGENT_ACTIONS": "process=cat"}
    settings = Settings.from_env(env)
    backend = make_backend(settings, env=env)
    assert isinstance(backend, LocalBackend)
    assert backend.command == [sys.executable, "-m", "agent", "--once"]
    assert backend.state_dir == tmp_path
    agent_env = local_agent_env(settings, env)
    assert agent_env["AGENT_STORAGE_CONNECTION"] == storage_env["AzureWebJobsStorage"]
    assert agent_env["AGENT_SLOTS"] == "2"
    assert agent_env["AGENT_FUNCTION_KEY"] == "k1"
    assert agent_env["AGENT_VM_TABLE"] == settings.vm_table
    assert agent_env["AGENT_WORK_QUEUE"] == settings.work_queue
    assert agent_env["AGENT_ACTIONS"] == "process=cat"  # AGENT_* settings pass through
    assert (backend.boot_s, backend.deallocate_s) == (0.0, 0.0)  # no delays unless asked
    env.update(LOCAL_BOOT_SECONDS="2.5", LOCAL_DEALLOCATE_SECONDS="4")
    delayed = make_backend(Settings.from_env(env), env=env)
    assert isinstance(delayed, LocalBackend)
    assert (delayed.boot_s, delayed.deallocate_s) == (2.5, 4.0)


def test_a_heartbeating_agent_makes_its_vm_running(
        registry: PoolRegistry, settings: Settings, storage_env: dict[str, str],
        make_local) -> None:  # noqa: ANN001
    registry.ensure_members(["vm01"], 1)
    registry.transition("vm01", VmState.STARTING, [VmState.DEALLOCATED])
    env = {**local_agent_env(settings, storage_env), "AGENT_STANDIN_HEARTBEAT": "1",
           "AGENT_STANDIN_ROOT": str(ROOT)}
    backend = make_local(env=env)
    backend.start("vm01")
    wait_for(lambda: registry.get("vm01").state == VmState.RUNNING, "the first heartbeat")
    rec = registry.get("vm01")
    assert rec.private_ip == "127.0.0.1" and rec.last_heartbeat is not None


def _events(backend: LocalBackend, kind: str) -> list[dict]:
    return [e for e in backend.power_events() if e["event"] == kind]


def test_a_start_stays_in_progress_for_the_boot_delay(make_local) -> None:  # noqa: ANN001
    backend = make_local(boot_s=2.0)
    op = backend.start("vm01")
    env_file = backend.work_dir("vm01") / "env.json"
    assert backend.power_state("vm01") == "starting"
    status = backend.poll(op)
    assert (status.done, status.status) == (False, "InProgress")
    assert not env_file.exists()  # no agent yet: the "VM" is still booting
    assert backend.start("vm01").started_at == op.started_at  # asking again changes nothing
    wait_for(env_file.exists, "the agent to launch once the boot is over")
    assert backend.power_state("vm01") == "running"
    assert backend.poll(op).succeeded
    (start,), (launch,) = _events(backend, "start"), _events(backend, "launch")
    assert start["at"] == op.started_at and start["pid"] is None
    assert launch["at"] - start["at"] >= 2.0  # launched no earlier than the boot delay allows
    assert launch["pid"] == json.loads((backend.state_dir / "vm01.json").read_text())["pid"]


def test_a_deallocation_completes_after_its_delay(make_local) -> None:  # noqa: ANN001
    backend = make_local(deallocate_s=4.0)
    started = backend.start("vm01")
    wait_for((backend.work_dir("vm01") / "ready").exists, "the stand-in to be ready")
    op = backend.deallocate("vm01")
    wait_for(lambda: _events(backend, "exit"), "the agent to drain and exit")
    assert (backend.work_dir("vm01") / "drained").exists()
    # the agent is gone, but the VM is not deallocated before its delay is over
    assert backend.power_state("vm01") == "deallocating"
    assert backend.poll(op).done is False
    with pytest.raises(OperationInProgress, match="stopping"):
        backend.start("vm01")
    wait_for(lambda: backend.power_state("vm01") == "deallocated", "the deallocation")
    assert backend.poll(op).succeeded
    (stop,), (done,) = _events(backend, "stop"), _events(backend, "deallocated")
    assert done["at"] == stop["at"] + 4.0 == op.started_at + 4.0
    assert backend.stopped_at("vm01") == done["at"]
    # what the backend bills: from the start request to the completed deallocation
    assert backend.billed_intervals() == {"vm01": [(started.started_at, done["at"])]}


def test_a_vm_stopped_while_booting_never_launches(make_local) -> None:  # noqa: ANN001
    backend = make_local(boot_s=1.0, deallocate_s=0.5)
    backend.start("vm01")
    op = backend.deallocate("vm01")
    assert backend.power_state("vm01") == "deallocating"
    wait_for(lambda: backend.poll(op).done, "the deallocation")
    assert backend.power_state("vm01") == "deallocated"
    time.sleep(1.5)  # past the boot delay: its timer finds the VM stopped
    assert not (backend.work_dir("vm01") / "env.json").exists()
    assert not _events(backend, "launch")
    (stop,), (done,) = _events(backend, "stop"), _events(backend, "deallocated")
    assert done["at"] == stop["at"] + 0.5


def test_without_delays_a_deallocation_ends_when_the_agent_exits(make_local) -> None:  # noqa: ANN001
    backend = make_local()
    started = backend.start("vm01")
    wait_for((backend.work_dir("vm01") / "ready").exists, "the stand-in to be ready")
    backend.deallocate("vm01")
    wait_for(lambda: backend.power_state("vm01") == "deallocated", "the agent to stop")
    (exit_,), (done,) = _events(backend, "exit"), _events(backend, "deallocated")
    assert done["at"] == exit_["at"]
    (start,) = _events(backend, "start")
    assert start["pid"] == int(started.token) and not _events(backend, "launch")
    assert backend.billed_intervals() == {"vm01": [(started.started_at, exit_["at"])]}
