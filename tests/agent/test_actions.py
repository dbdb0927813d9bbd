"""Running an action: no shell, a timeout that stops the whole process group, bounded stderr."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from agent import actions

FAKE = str(Path(__file__).resolve().parent / "fake_action.py")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers signal 0; it is gone for our purposes
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ", 1)[1][0] != "Z"


def test_placeholders_fill_inside_arguments(tmp_path: Path) -> None:
    cmd = actions.build_command(("tool", "--in={input}", "{output}", "{other}"),
                                tmp_path / "a b;c", tmp_path / "out")
    assert cmd == ["tool", f"--in={tmp_path}/a b;c", f"{tmp_path}/out", "{other}"]


def test_timeout_kills_the_process_group(tmp_path: Path, wait) -> None:
    control = tmp_path / "control"
    control.mkdir()
    source = tmp_path / "in"
    source.write_bytes(b"SPAWN")
    result = actions.run([sys.executable, FAKE, str(source), str(tmp_path / "out"),
                          str(control)], tmp_path, timeout=2, tick_seconds=0.1,
                         on_tick=lambda: None)
    assert result.exit_code is None and result.stopped == "action timed out after 2 s"
    assert not result.succeeded
    grandchild = int((control / "grandchild").read_text())
    wait(lambda: not _alive(grandchild), timeout=10, what="the grandchild to die")


def test_on_tick_can_stop_the_action(tmp_path: Path) -> None:
    ticks = []

    def tick() -> str | None:
        ticks.append(1)
        return "claim lost" if len(ticks) >= 2 else None

    result = actions.run([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path,
                         timeout=60, tick_seconds=0.05, on_tick=tick)
    assert result.stopped == "claim lost" and len(ticks) == 2


def test_stderr_tail_is_bounded_and_secrets_are_not_passed(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_FUNCTION_KEY", "secret")
    script = ("import os, sys; sys.stderr.write('x' * 10000 + 'END');"
              "sys.exit(0 if 'AGENT_FUNCTION_KEY' not in os.environ"
              " and os.environ['VMPOOL_JOB_ID'] == 'j1' else 9)")
    result = actions.run([sys.executable, "-c", script], tmp_path, timeout=30,
                         tick_seconds=0.5, on_tick=lambda: None, env={"VMPOOL_JOB_ID": "j1"})
    assert result.exit_code == 0
    assert result.stderr_tail.endswith("END") and len(result.stderr_tail) <= 4097


def test_a_missing_program_is_a_clear_failure(tmp_path: Path) -> None:
    result = actions.run(["/nonexistent/tool", "x"], tmp_path, timeout=5, tick_seconds=0.5,
                         on_tick=lambda: None)
    assert not result.succeeded and "cannot start '/nonexistent/tool'" in result.stderr_tail
