"""What the ingest triggers decide: which run a timer tick is, which blobs start a job."""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from cronsim import CronSim

from shared.contracts import FileJob, RunInput, file_job_input, run_input
from shared.naming import BlobNameError, check_blob_name, run_instance_id
from shared.pipeline import FileRef
from shared.services import Services

log = logging.getLogger(__name__)
_ETAG = re.compile(r'^"?0x[0-9A-Fa-f]{1,32}"?$')  # how Blob storage writes a blob's ETag


def scheduled_time(schedule: str, now: datetime) -> datetime:
    """The schedule occurrence a timer firing at `now` belongs to (tolerates a late or early
    fire of up to a second), so both fires of a double tick map to the same run id."""
    return next(CronSim(schedule, now + timedelta(seconds=1), reverse=True))


def run_input_for_tick(services: Services, now: datetime) -> tuple[str, RunInput]:
    s = services.settings
    when = scheduled_time(s.collect_schedule, now)
    run_id = run_instance_id(when)
    return run_id, run_input(s, run_id, source=s.collect_source, scheduled_at=when.isoformat())


def file_start_for_blob(services: Services, container: str, name: str,
                        seen: Mapping[str, Any] | None = None) -> tuple[str, FileJob] | None:
    """(instance id, input) for a new blob, or None when the blob is not ours to start:
    it carries `run_id` (its run owns it), it is gone, or its name is hostile.

    `seen` is what the trigger was given about the blob (`etag`, `size`, `metadata`); with
    an ETag in it the blob is not asked about again."""
    try:
        check_blob_name(name)
    except BlobNameError as exc:
        log.warning("blob %r/%r ignored: %s", container, name[:200], exc)
        return None
    seen = seen or {}
    etag = seen.get("etag")
    if isinstance(etag, str) and _ETAG.match(etag) and isinstance(seen.get("metadata"), dict):
        size, metadata = int(seen.get("size") or 0), seen["metadata"]
    else:  # not told, or not in a shape to trust: ask storage
        try:
            props = services.blobs.get_blob_client(container, name).get_blob_properties()
        except ResourceNotFoundError:
            log.info("blob %s/%s is gone; nothing to start", container, name[:200])
            return None
        etag, size, metadata = props.etag, props.size, props.metadata
    if (metadata or {}).get("run_id"):
        return None
    ref = FileRef(container, name, etag.strip('"'), size)
    return ref.instance_id, file_job_input(services.settings, container, name, ref.instance_id,
                                           etag=f'"{ref.etag}"')


def waiting_files(services: Services, older_than: datetime, limit: int
                  ) -> list[tuple[str, FileJob]]:
    """(instance id, input) of the files in the data container last written before
    `older_than` that no run owns: what the blob trigger would start for each of them."""
    container = services.settings.data_container
    out: list[tuple[str, FileJob]] = []
    for blob in services.blobs.get_container_client(container).list_blobs(
            include=["metadata"]):
        if len(out) >= limit:
            break
        if blob.last_modified is None or blob.last_modified >= older_than:
            continue
        if (blob.metadata or {}).get("run_id"):
            continue
        try:
            check_blob_name(blob.name)
        except BlobNameError:
            continue  # the trigger refused it too, with a warning
        ref = FileRef(container, blob.name, str(blob.etag).strip('"'), blob.size)
        out.append((ref.instance_id, file_job_input(services.settings, container, blob.name,
                                                    ref.instance_id, etag=f'"{ref.etag}"')))
    return out


def split_blob_path(path: str, default_container: str) -> tuple[str, str]:
    """`data/x/y.json` → (`data`, `x/y.json`); a bare name belongs to the default container."""
    if "/" in path:
        container, name = path.split("/", 1)
        return container, name
    return default_container, path
