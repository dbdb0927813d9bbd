"""Local-pool agent command that leaves one marker per VM boot in `$E2E_BOOT_DIR`, so a test
can count starts independently of the app's own telemetry; then runs the e2e launcher."""
import os
import runpy
import uuid
from pathlib import Path

Path(os.environ["E2E_BOOT_DIR"], f"{os.environ['AGENT_VM_NAME']}-{uuid.uuid4().hex}").touch()
runpy.run_path(str(Path(__file__).resolve().parent.parent / "e2e" / "agent_launcher.py"),
               run_name="__main__")
