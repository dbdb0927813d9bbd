"""Run one action: a command template filled with the input and output paths, without a shell.

The action runs in its own process group so a timeout or a lost claim can stop it and every
child it started. Its stderr goes to a file (a pipe could fill and block it) of which only the
tail is reported. The agent's own secrets (`AGENT_*` variables) are not passed on.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.config import INPUT, OUTPUT

STDERR_TAIL_BYTES = 4096
STDERR_FILE = "stderr.txt"  # in the job folder; the agent uploads it whole after the action
KILL_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class ActionResult:
    exit_code: int | None       # None when the agent stopped the action
    stderr_tail: str
    stopped: str | None = None  # why the agent stopped it (timeout, claim lost, output size)

    @property
    def succeeded(self) -> bool:
        return self.stopped is None and self.exit_code == 0


def build_command(template: Sequence[str], input_path: Path, output_path: Path) -> list[str]:
    """Fill `{input}`/`{output}` inside each argument; nothing else is interpreted."""
    return [arg.replace(INPUT, str(input_path)).replace(OUTPUT, str(output_path))
            for arg in template]


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
    env.update(extra)
    return env


def tail(path: Path, limit: int = STDERR_TAIL_BYTES) -> str:
    """The last `limit` bytes of a file as text (invalid UTF-8 replaced)."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - limit))
            data = handle.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace")
    return ("…" + text) if size > limit else text


def _kill_group(process: subprocess.Popen) -> None:
    """SIGTERM the action's process group, then SIGKILL whatever is left after a grace time."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_SECONDS), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            if sig == signal.SIGTERM:
                # the leader exited; its children may linger in the group
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return
        except subprocess.TimeoutExpired:
            continue


def run(command: list[str], cwd: Path, timeout: float, tick_seconds: float,
        on_tick: Callable[[], str | None], env: Mapping[str, str] | None = None) -> ActionResult:
    """Run `command` to completion, calling `on_tick` every `tick_seconds`.

    `on_tick` returns a reason to stop the action (or None to go on); a reason and the timeout
    both kill the whole process group.
    """
    stderr_path = cwd / STDERR_FILE
    with stderr_path.open("wb") as err, (cwd / "stdout.txt").open("wb") as out:
        try:
            process = subprocess.Popen(command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=err, env=child_env(env or {}),
                                       start_new_session=True)
        except OSError as exc:
            return ActionResult(None, f"cannot start {command[0]!r}: {exc.strerror or exc}",
                                stopped="not started")
    deadline = time.monotonic() + timeout
    stopped: str | None = None
    while True:
        try:
            code = process.wait(timeout=max(0.01, min(tick_seconds,
                                                       deadline - time.monotonic())))
            return ActionResult(code, tail(stderr_path))
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() >= deadline:
            stopped = f"action timed out after {timeout:g} s"
        else:
            stopped = on_tick()
        if stopped:
            _kill_group(process)
            return ActionResult(None, tail(stderr_path), stopped=stopped)
