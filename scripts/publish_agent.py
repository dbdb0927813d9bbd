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

Right after provisioning, the signed-in identity's storage role may not be in effect yet: the
first writes are retried while storage answers 403 AuthorizationPermissionMismatch or
AuthorizationFailure, for `--rbac-wait` seconds (10 minutes), then it fails saying so.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import sys
import tarfile
import time
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


# What storage answers (403, x-ms-error-code) while the caller's data role is not in effect yet.
RBAC_DENIALS = frozenset({"AuthorizationPermissionMismatch", "AuthorizationFailure"})
RBAC_WAIT_SECONDS = 600.0  # role assignments usually take effect within minutes; 10 at most


class PublishError(RuntimeError):
    """Publishing cannot go on; the message says why and what to do."""


def until_authorized(action, what: str, wait_seconds: float = RBAC_WAIT_SECONDS,
                     first_pause: float = 5.0, max_pause: float = 60.0,
                     clock=time.monotonic, sleep=time.sleep,
                     log=lambda line: print(line, file=sys.stderr, flush=True)):
    """`action()`, retried while storage refuses it for want of a role (a role assignment made
    by the provisioning a moment ago takes minutes to reach storage), with a doubling pause, for
    `wait_seconds` at most; then PublishError. Any other error is raised at once."""
    from azure.core.exceptions import HttpResponseError  # noqa: PLC0415

    deadline, pause, attempt = clock() + wait_seconds, first_pause, 0
    while True:
        attempt += 1
        try:
            return action()
        except HttpResponseError as exc:
            code = getattr(exc, "error_code", None) or ""
            code = str(getattr(code, "value", code))  # a StorageErrorCode member, or text
            if exc.status_code != 403 or code not in RBAC_DENIALS:
                raise
            left = deadline - clock()
            if left <= 0:
                raise PublishError(
                    f"storage still refuses to {what} after {wait_seconds:g}s and {attempt} "
                    f"tries (403 {code}): the signed-in identity needs the Storage Blob Data "
                    "Contributor role on the storage account (infra/app/rbac.bicep gives it to "
                    "principalId). If it was just assigned, run the hook again in a few "
                    "minutes: `azd hooks run postprovision`.") from None
            wait = min(pause, left)
            log(f"storage refused to {what} (403 {code}); waiting {wait:.0f}s for the role "
                f"assignment to take effect")
            sleep(wait)
            pause = min(pause * 2, max_pause)


def publish(container, package: bytes, version: str,
            rbac_wait_seconds: float = RBAC_WAIT_SECONDS, first_pause: float = 5.0,
            ) -> dict[str, str]:
    """Upload the package, then the release file that points at it.

    The first writes (the container, the versioned package) wait through role propagation
    (`until_authorized`); once one has gone through, the identity's role is in effect.
    """
    from azure.core.exceptions import ResourceExistsError  # noqa: PLC0415

    blob = package_blob_name(version)

    def first_writes() -> None:
        try:
            container.create_container()
        except ResourceExistsError:
            pass
        container.upload_blob(blob, package, overwrite=True)

    until_authorized(first_writes, f"write {blob} to container {container.container_name}",
                     rbac_wait_seconds, first_pause=first_pause)
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
    parser.add_argument("--rbac-wait", type=float, default=RBAC_WAIT_SECONDS,
                        help="seconds to keep retrying while storage refuses for want of a role "
                             f"(default {RBAC_WAIT_SECONDS:g})")
    args = parser.parse_args(argv)
    from azure.storage.blob import BlobServiceClient  # noqa: PLC0415

    if args.connection_string:
        service = BlobServiceClient.from_connection_string(args.connection_string)
    else:
        from azure.identity import DefaultAzureCredential  # noqa: PLC0415

        service = BlobServiceClient(args.account_url, credential=DefaultAzureCredential())
    package, version = build_package(version=args.version)
    try:
        release = publish(service.get_container_client(args.container), package, version,
                          rbac_wait_seconds=args.rbac_wait)
    except PublishError as exc:
        print(f"publish_agent: {exc}", file=sys.stderr)
        return 1
    print(f"published agent {release['version']} as {release['blob']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
