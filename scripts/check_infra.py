"""Static checks of infra/ with checkov (Bicep, Kubernetes manifests, Dockerfiles).

Checkov pins many packages that clash with the app's own, so it lives in a virtualenv of its own,
`.venv-infra`, built from `requirements-infra.txt` once and reused while that file and the Python
that built it are unchanged. `python scripts/check_infra.py` (what `make lint` runs) prints every
failing check and exits 1 if there is one; tests/infra runs the same code.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-infra"
REQUIREMENTS = ROOT / "requirements-infra.txt"
FRAMEWORKS = ("bicep", "kubernetes", "dockerfile")
CHECKOV_TIMEOUT_SECONDS = 600


class InfraCheckError(RuntimeError):
    """Checkov could not run or its report could not be read."""


@dataclass
class Finding:
    """One failed check: which rule, on which resource, where."""

    check_id: str
    name: str
    resource: str
    file: str
    lines: tuple[int, int]

    def __str__(self) -> str:
        return (f"{self.check_id} {self.name}\n    {self.resource} "
                f"({self.file}:{self.lines[0]}-{self.lines[1]})")


@dataclass
class Report:
    """What one checkov run found, per framework."""

    failed: list[Finding] = field(default_factory=list)
    passed: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=dict)
    parsing_errors: list[str] = field(default_factory=list)
    resources: dict[str, int] = field(default_factory=dict)


def ensure_infra_venv() -> Path:
    """Create or reuse `.venv-infra`; return its bin folder."""
    base_python = getattr(sys, "_base_executable", sys.executable)
    stamp = hashlib.sha256((REQUIREMENTS.read_text() + base_python).encode()).hexdigest()
    bin_dir = VENV / "bin"
    stamp_file = VENV / ".stamp"
    if (bin_dir / "python").exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
        return bin_dir
    shutil.rmtree(VENV, ignore_errors=True)
    subprocess.run([base_python, "-m", "venv", str(VENV)], check=True)
    install = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet",
         "--disable-pip-version-check", "-r", str(REQUIREMENTS)],
        capture_output=True, text=True, check=False)
    if install.returncode != 0:
        raise InfraCheckError(f"installing {REQUIREMENTS.name} failed:\n{install.stderr[-4000:]}")
    stamp_file.write_text(stamp)
    return bin_dir


def run_checkov(*directories: Path) -> Report:
    """Run checkov over `directories` (default: infra/) and collect its JSON report."""
    bin_dir = ensure_infra_venv()
    dirs = directories or (ROOT / "infra",)
    command = [str(bin_dir / "checkov"), "--framework", *FRAMEWORKS, "--output", "json",
               "--compact", "--skip-download"]
    for directory in dirs:
        command += ["--directory", str(directory)]
    # No calls home (--skip-download, no API key); no process pool, whose workers hang when a
    # parser raises.
    env = {**os.environ, "CHECKOV_PARALLELIZATION_TYPE": "none", "BC_SKIP_MAPPING": "TRUE",
           "LOG_LEVEL": "ERROR"}
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=CHECKOV_TIMEOUT_SECONDS, check=False)
    runs = _json_documents(proc.stdout)
    if not runs:
        raise InfraCheckError(f"checkov printed no JSON report (exit {proc.returncode}):\n"
                              f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return _report(runs)


def _json_documents(text: str) -> list[dict]:
    """Checkov prints one JSON document per scanned directory, one after the other."""
    decoder = json.JSONDecoder()
    runs: list[dict] = []
    index = 0
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            return runs
        try:
            body, index = decoder.raw_decode(text, index)
        except ValueError:
            return []
        runs += body if isinstance(body, list) else [body]


def _report(runs: list[dict]) -> Report:
    report = Report()
    for run in runs:
        if "check_type" not in run:  # an empty scan: {"passed": 0, "failed": 0, ...}
            continue
        framework = run["check_type"]
        results = run.get("results", {})
        report.passed[framework] = len(results.get("passed_checks", []))
        report.resources[framework] = run.get("summary", {}).get("resource_count", 0)
        report.parsing_errors += results.get("parsing_errors", [])
        report.skipped[framework] = [c["check_id"] for c in results.get("skipped_checks", [])]
        for check in results.get("failed_checks", []):
            report.failed.append(Finding(
                check_id=check["check_id"], name=check.get("check_name", ""),
                resource=check.get("resource", ""),
                file=check.get("file_abs_path") or check.get("file_path", ""),
                lines=tuple(check.get("file_line_range", [0, 0]))))  # type: ignore[arg-type]
    return report


def main() -> int:
    report = run_checkov()
    for finding in report.failed:
        print(f"FAILED {finding}")
    for path in report.parsing_errors:
        print(f"NOT PARSED {path}")
    counts = ", ".join(f"{fw}: {n} passed, {len(report.skipped.get(fw, []))} skipped"
                       for fw, n in sorted(report.passed.items()))
    print(f"checkov: {counts}; {len(report.failed)} failed, "
          f"{len(report.parsing_errors)} not parsed")
    return 1 if report.failed or report.parsing_errors else 0


if __name__ == "__main__":
    sys.exit(main())
