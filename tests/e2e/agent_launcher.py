"""Local-pool agent command for the end-to-end tests: the real agent, except for the VM named
in `E2E_DEAD_VM`, which "boots" but never runs an agent (no heartbeat ever arrives)."""
import os
import runpy
import signal
import sys
import time

if os.environ.get("AGENT_VM_NAME") == os.environ.get("E2E_DEAD_VM", "-"):
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(1)
sys.argv = ["agent"]
runpy.run_module("agent", run_name="__main__")
