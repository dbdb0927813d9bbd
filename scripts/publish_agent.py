"""Publish the agent: a versioned package and the release file agents upgrade from.

    python scripts/publish_agent.py --account-url https://ACCOUNT.blob.core.windows.net \
        [--container agent-package] [--version 0.2.0+abc123]

(or `--connection-string` instead of `--account-url`, which signs in with azure-identity's
DefaultAzureCredential). The package is `agent/` and `shared/` as a tarball; `--version` stamps
that version into the packaged `agent/__init__.py` (the deploy hooks pass the version plus the
commit, so every deployment is a version agents move to). It is uploaded as
`vmpool-agent-<version>.tar.gz`, also as `vmpool-agent.tar.gz` (what cloud-init installs at first
boot), and `release.json` is written last, so no agent sees a release before its package.
Agents pick it up at boot and when idle (agent/upgrade.py).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.upgrade import RELEASE_BLOB, package_blob_name  # noqa: E402

_VERSION_LINE = re.compile(r'^__version__ = "[^"]*"$', re.MULTILINE)


def running_version(root: Path = ROOT) -> str:
    match = re.search(r'^__version__ = "([^"]*)"$', (root / "agent" / "__init__.py").read_text(),
                      re.MULTILINE)
    if not match:
        raise SystemExit("agent/__init__.py has no __version__")
    return match.group(1)


def build_package(root: Path = ROOT, version: str | None = None) -> tuple[bytes, str]:
    """The tarball (agent/ and shared/ at the top) and the version it carries."""
    version = version or running_version(root)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for top in ("agent", "shared"):
            for path in sorted((root / top).rglob("*")):
                if "__pycache__" in path.parts or path.suffix == ".pyc" or not path.is_file():
                    continue
                name = str(path.relative_to(root))
                data = path.read_bytes()
                if name == "agent/__init__.py":
                    data = _VERSION_LINE.sub(f'__version__ = "{version}"', data.decode()).encode()
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue(), version


def publish(container, package: bytes, version: str,
            rbac_wait_seconds: float = 600.0) -> dict[str, str]:
    """Upload the package, then the release file that points at it.

    A role assignment made by the provisioning a moment ago takes minutes to reach storage, so
    403 answers are retried (with backoff) for up to `rbac_wait_seconds`.
    """
    import time  # noqa: PLC0415

    from azure.core.exceptions import HttpResponseError, ResourceExistsError  # noqa: PLC0415

    deadline, pause = time.monotonic() + rbac_wait_seconds, 5.0
    while True:
        try:
            container.create_container()
            break
        except ResourceExistsError:
            break
        except HttpResponseError as exc:
            if exc.status_code != 403 or time.monotonic() + pause > deadline:
                raise
            print(f"storage refused ({exc.reason}); waiting {pause:.0f}s for the role "
                  "assignment to propagate", file=sys.stderr)
            time.sleep(pause)
            pause = min(pause * 2, 60.0)
    blob = package_blob_name(version)
    container.upload_blob(blob, package, overwrite=True)
    container.upload_blob("vmpool-agent.tar.gz", package, overwrite=True)
    release = {"version": version, "blob": blob, "sha256": hashlib.sha256(package).hexdigest()}
    container.upload_blob(RELEASE_BLOB, json.dumps(release).encode(), overwrite=True)
    return release


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--account-url")
    where.add_argument("--connection-string")
    parser.add_argument("--container", default="agent-package")
    parser.add_argument("--version", help="version to stamp (default: agent/__init__.py's)")
    args = parser.parse_args(argv)
    from azure.storage.blob import BlobServiceClient  # noqa: PLC0415

    if args.connection_string:
        service = BlobServiceClient.from_connection_string(args.connection_string)
    else:
        from azure.identity import DefaultAzureCredential  # noqa: PLC0415

        service = BlobServiceClient(args.account_url, credential=DefaultAzureCredential())
    package, version = build_package(version=args.version)
    release = publish(service.get_container_client(args.container), package, version)
    print(f"published agent {release['version']} as {release['blob']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
