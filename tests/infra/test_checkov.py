"""checkov over infra/ (Bicep, Kubernetes, Dockerfile): no failing check, nothing unparsed;
and the same scan over a deliberately bad template and manifest fails (the check can fail)."""
from __future__ import annotations

from pathlib import Path

from scripts.check_infra import run_checkov

BAD_BICEP = """
param location string = 'westeurope'
resource bad 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: 'stbadexample'
  location: location
  kind: 'StorageV2'
  sku: { name: 'Standard_LRS' }
  properties: {
    allowBlobPublicAccess: true
    minimumTlsVersion: 'TLS1_0'
    supportsHttpsTrafficOnly: false
  }
}
"""

BAD_MANIFEST = """
apiVersion: v1
kind: Pod
metadata:
  name: bad
spec:
  containers:
    - name: bad
      image: nginx:latest
      securityContext:
        privileged: true
"""


def test_infra_passes_checkov(root: Path) -> None:
    report = run_checkov(root / "infra")
    assert not report.failed, "checkov failures in infra/:\n" + "\n".join(
        str(f) for f in report.failed)
    assert not report.parsing_errors, f"checkov could not parse: {report.parsing_errors}"
    # Every framework really scanned our files.
    assert report.resources.get("bicep", 0) >= 30, report.resources
    assert report.resources.get("kubernetes", 0) >= 8, report.resources
    assert report.passed.get("dockerfile", 0) >= 10, report.passed


def test_checkov_reports_a_bad_template_and_manifest(tmp_path: Path) -> None:
    """The same scan fails on what it should: old TLS, HTTP, open network, a privileged pod."""
    (tmp_path / "bad.bicep").write_text(BAD_BICEP)
    (tmp_path / "bad-pod.yaml").write_text(BAD_MANIFEST)
    report = run_checkov(tmp_path)
    found = {f.check_id for f in report.failed}
    assert {"CKV_AZURE_44", "CKV_AZURE_3", "CKV_AZURE_35"} <= found, found
    assert {"CKV_K8S_16", "CKV_K8S_14"} <= found, found


def test_every_skip_says_why(infra: Path) -> None:
    """Inline skips must carry a reason after the check id."""
    lines = [(p, line) for p in infra.rglob("*") if p.is_file()
             for line in p.read_text(errors="replace").splitlines()
             if "checkov:skip=" in line or "checkov.io/skip" in line]
    assert lines, "expected inline skips with reasons"
    for path, line in lines:
        reason = line.split("=", 1)[1].split(":", 1)[-1] if "checkov:skip=" in line \
            else line.split("=", 1)[1]
        assert len(reason.strip()) >= 15, f"{path}: skip without a reason: {line.strip()}"
