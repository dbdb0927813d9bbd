"""Schemathesis over the served `openapi.json`, against the real app in devhost: no 5xx, every
answer as documented (status, content type, schema), 405 with `Allow`, and the server accepts
what the document allows and refuses what it does not. Bounded by examples per operation; the
checks and their expected statuses are in schemathesis.toml beside this file.
"""
import os
import subprocess
import sys
from pathlib import Path

CONFIG = Path(__file__).resolve().parent / "schemathesis.toml"


def test_schemathesis_finds_no_5xx_and_no_schema_violations(start_app, tmp_path: Path) -> None:
    # No VM starts, so accepted jobs wait on the queue and the run stays bounded; the results
    # container has its default name, the one the document's `output` pattern states.
    app = start_app(POOL_MAX_RUNNING="0", RESULTS_CONTAINER="results")
    examples = os.environ.get("FUZZ_MAX_EXAMPLES", "25")
    proc = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run",
         f"{app.base}/api/openapi.json",
         "--url", app.base, "-H", f"x-functions-key: {app.env['DEVHOST_FUNCTION_KEY']}",
         "--phases", "examples,coverage,fuzzing",
         "--max-examples", examples, "--seed", "12", "--workers", "1",
         "--request-timeout", "20", "--no-color", "--report", "junit",
         "--report-dir", str(tmp_path)],
        cwd=tmp_path, check=False, capture_output=True, text=True, timeout=1500)
    # Long generated bodies make the report huge: keep each failure's opening lines.
    report = "\n".join(line[:300] for line in proc.stdout.splitlines())
    failures = report.find("FAILURES")
    assert proc.returncode == 0, report[max(failures, 0):][:20000] + proc.stderr[-3000:]
