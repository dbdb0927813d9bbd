"""Self-upgrade: the agent runs the version the deployment published, and moves to a new one
only when it holds no work.

The deploy hooks (`scripts/publish_agent.py`) upload a versioned package
(`vmpool-agent-<version>.tar.gz`: `agent/` and `shared/` at the top) to the package container
and then `release.json` (`{"version", "blob", "sha256"}`) beside it; the release file is written
last, so an agent never sees a release whose package is not there yet. On boot, and every
`AGENT_UPGRADE_CHECK_SECONDS` while it has nothing in hand, the agent reads `release.json`.
When the published version differs from its own it prepares the new one while still working
(download, checksum, unpack under `AGENT_INSTALL_DIR/versions/<version>`, and its requirements
if they changed), then drains (takes no new message, finishes any in hand), points
`AGENT_INSTALL_DIR/app` at the new version and re-executes itself in place (same process id,
so systemd and the local pool see no stop). A failed preparation leaves the agent working on
its version; it tries again at the next check. Messages are never held across the switch, so
no job is lost: work waits in the queue, claimed by no one, for a few seconds at most.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient

log = logging.getLogger(__name__)
RELEASE_BLOB = "release.json"
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}$")


class UpgradeError(Exception):
    """A release could not be prepared; the agent keeps running its own version."""


@dataclass(frozen=True)
class Release:
    version: str
    blob: str
    sha256: str


def package_blob_name(version: str) -> str:
    return f"vmpool-agent-{version}.tar.gz"


class Upgrader:
    """Reads the published release and installs it next to the running version."""

    def __init__(self, blobs: BlobServiceClient, container: str, install_dir: Path,
                 running_version: str) -> None:
        self.container = blobs.get_container_client(container)
        self.install_dir = install_dir
        self.running = running_version

    @property
    def app_link(self) -> Path:
        """What PYTHONPATH names: a link to the version in use."""
        return self.install_dir / "app"

    def published(self) -> Release | None:
        """The release the deployment published, or None (none yet, or unreadable)."""
        try:
            raw = self.container.get_blob_client(RELEASE_BLOB).download_blob().readall()
            body = json.loads(raw)
            release = Release(str(body["version"]), str(body["blob"]), str(body["sha256"]))
        except ResourceNotFoundError:
            return None
        except (AzureError, ValueError, KeyError, TypeError) as exc:
            log.warning("cannot read the published agent release: %s", exc)
            return None
        if not _VERSION_RE.match(release.version) or ".." in release.blob or \
                release.blob.startswith("/"):
            log.warning("ignoring a malformed release %r", release)
            return None
        return release

    def newer(self) -> Release | None:
        """The published release if it is not the running version."""
        release = self.published()
        return release if release is not None and release.version != self.running else None

    def prepare(self, release: Release) -> Path:
        """Download, verify and unpack `release`; returns its folder. Raises UpgradeError."""
        target = self.install_dir / "versions" / release.version
        if (target / "agent" / "__main__.py").is_file():
            return target  # prepared earlier (or the version installed at first boot)
        staging = self.install_dir / "versions" / f".{release.version}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        package = staging.with_suffix(".tar.gz")
        try:
            digest = hashlib.sha256()
            with package.open("wb") as handle:
                stream = self.container.get_blob_client(release.blob).download_blob()
                for chunk in stream.chunks():
                    digest.update(chunk)
                    handle.write(chunk)
            if digest.hexdigest() != release.sha256.lower():
                raise UpgradeError(f"package {release.blob} does not match its sha256")
            with tarfile.open(package, "r:gz") as tar:
                if hasattr(tarfile, "data_filter"):  # no links out, no absolute paths
                    tar.extractall(staging, filter="data")
                else:  # pragma: no cover - Python without PEP 706
                    tar.extractall(staging)  # noqa: S202
            if not (staging / "agent" / "__main__.py").is_file():
                raise UpgradeError(f"package {release.blob} holds no agent/")
            self._requirements(staging)
            staging.rename(target)
        except (AzureError, OSError, tarfile.TarError) as exc:
            raise UpgradeError(f"cannot prepare agent {release.version}: {exc}") from None
        finally:
            package.unlink(missing_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
        log.info("agent %s prepared in %s", release.version, target)
        return target

    def _requirements(self, folder: Path) -> None:
        """Install the new version's requirements only if they differ from the running one's."""
        new = folder / "agent" / "requirements.txt"
        current = Path(__file__).resolve().parent / "requirements.txt"
        if not new.is_file() or (current.is_file() and new.read_bytes() == current.read_bytes()):
            return
        result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-r",
                                 str(new)], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise UpgradeError(f"installing the requirements failed: {result.stderr[-2000:]}")

    def switch_and_restart(self, folder: Path) -> None:
        """Point `app` at `folder` and re-execute this process on it (does not return)."""
        link = self.app_link
        if link.exists() and not link.is_symlink():  # a first install unpacked in place
            link.rename(self.install_dir / "versions" / f"initial-{os.getpid()}")
        tmp = self.install_dir / ".app.new"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(folder)
        tmp.replace(link)  # atomic: `app` is always one whole version
        env = dict(os.environ, PYTHONPATH=str(link))
        log.info("restarting on agent %s", folder.name)
        logging.shutdown()
        os.execve(sys.executable, [sys.executable, "-m", "agent"], env)
