"""Killing a whole machine (or pod) at once, for the end-to-end tests."""
import os
import signal
from pathlib import Path


def kill_machine(pid: int) -> None:
    """SIGKILL a process and every process below it, as a power cut or a killed pod would."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    doomed, frontier = {pid}, [pid]
    while frontier:
        current = frontier.pop()
        for child, parent in parents.items():
            if parent == current and child not in doomed:
                doomed.add(child)
                frontier.append(child)
    for victim in doomed:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
