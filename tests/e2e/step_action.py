"""The action the end-to-end tests run on their local VMs: `step_action.py NAME IN OUT`.

Writes `NAME:` + the input to the output, so a chain of steps is visible in the final result.
An input containing `slow` sleeps first (long enough for a test to kill the agent mid-file);
an input containing `fail` exits 3 with a message on stderr, unless the file named by
`E2E_FIX_FILE` exists (the action has been "fixed"). With `E2E_PID_DIR`, each run leaves a file
named after its pid there, so a test can check that a cancelled action really stopped.
"""
import os
import sys
import time
from pathlib import Path

name, source, target = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
data = source.read_bytes()
if os.environ.get("E2E_PID_DIR"):
    (Path(os.environ["E2E_PID_DIR"]) / str(os.getpid())).write_text(data.decode(errors="replace"))
if b"slow" in data:
    time.sleep(float(os.environ.get("E2E_SLOW_SECONDS", "6")))
fixed = os.environ.get("E2E_FIX_FILE") and Path(os.environ["E2E_FIX_FILE"]).exists()
if b"fail" in data and not fixed:
    sys.stderr.write(f"{name}: refusing input marked fail\n")
    sys.exit(3)
target.write_bytes(name.encode() + b":" + data)
count_dir = __import__("os").environ.get("E2E_COUNT_DIR")
if count_dir:  # one marker per completed execution, named after the input's content
    digest = __import__("hashlib").sha1(data).hexdigest()[:16]
    marker = Path(count_dir) / f"{name}-{digest}-{__import__('uuid').uuid4().hex[:8]}"
    marker.write_text("")
