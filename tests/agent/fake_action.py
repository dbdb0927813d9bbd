"""A stand-in for a real processing program, steered by the content of its input file.

Usage: fake_action.py INPUT OUTPUT CONTROL_DIR
- `FAIL...`  writes lines to stderr and exits 3;
- `BIG n`    writes n bytes of output;
- `SLOW...`  records its pid in CONTROL_DIR/started and waits while CONTROL_DIR/hold exists;
- `SPAWN...` starts a grandchild that sleeps (its pid in CONTROL_DIR/grandchild), then sleeps;
- anything else: the output is the input in upper case.
Every call appends its input path and working folder to CONTROL_DIR/calls.log.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    source, target, control = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    with (control / "calls.log").open("a") as log:
        log.write(f"{source}\t{os.getcwd()}\t{os.environ.get('AGENT_FUNCTION_KEY', '-')}\n")
    data = source.read_bytes()
    if data.startswith(b"FAIL"):
        for i in range(500):
            print(f"stderr line {i}: something broke", file=sys.stderr)
        print("the last words", file=sys.stderr)
        return 3
    if data.startswith(b"BIG"):
        size = int(data.split()[1])
        with target.open("wb") as out:
            out.write(b"x" * size)
        return 0
    if data.startswith(b"SLOW"):
        with (control / "started").open("a") as started:
            started.write(f"{os.getpid()}\n")
        deadline = time.monotonic() + 120
        while (control / "hold").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    if data.startswith(b"SPAWN"):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        (control / "grandchild").write_text(str(child.pid))
        time.sleep(120)
    target.write_bytes(data.upper())
    return 0


if __name__ == "__main__":
    sys.exit(main())
