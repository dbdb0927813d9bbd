"""One work item, end to end: claim, download, run, upload, report, delete.

Order matters for safety. The step is claimed before the file is touched, so two agents never
work on one attempt. The message is deleted only after the app acknowledged the report, so a
crash anywhere before leaves the message to come back and the work to be redone elsewhere. A
lost claim stops the work without a report: someone else owns the attempt now.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient

from agent import actions, paths
from agent.api import ApiRefused, ApiUnavailable, AppClient
from agent.config import AgentConfig
from agent.lease import MessageLease
from shared import telemetry
from shared.claims import (
    ABANDONED,
    DONE,
    FAILED,
    AlreadyClaimed,
    AlreadyFinished,
    Claim,
    ClaimError,
    ClaimLost,
    ClaimStore,
    ClaimWithdrawn,
)
from shared.workitem import WorkItem

log = logging.getLogger(__name__)
MAX_ERROR_CHARS = 4000
JOB_DIR_PREFIX = "job-"


class StepAbandoned(Exception):
    """This agent must stop working on the step without reporting (claim lost, storage down)."""


class HandedBack(StepAbandoned):
    """The VM is being evicted: the step goes back to the queue for another VM at once."""


@dataclass
class JobReport:
    """What the done callback carries."""

    status: str
    exit_code: int | None = None
    error: str | None = None
    output: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    duration_ms: int = 0
    stderr_tail: str = ""              # the action's last stderr bytes, for the log record
    stderr_blob: str | None = None     # where the whole stderr went


    def body(self, item: WorkItem) -> dict[str, Any]:
        return {"step": item.step, "attempt": item.attempt, "token": item.token,
                "action": item.action, "instanceId": item.instance_id, "blob": item.blob,
                "status": self.status, "exitCode": self.exit_code,
                "error": _bounded(self.error), "output": self.output, "bytesIn": self.bytes_in,
                "bytesOut": self.bytes_out, "durationMs": self.duration_ms}


def _bounded(text: str | None) -> str | None:
    if text is None or len(text) <= MAX_ERROR_CHARS:
        return text
    return "…" + text[-MAX_ERROR_CHARS:]


class JobHeartbeat:
    """Background thread keeping the message invisible and the claim fresh while a job runs."""

    def __init__(self, lease: MessageLease, claims: ClaimStore, item: WorkItem, vm: str,
                 interval: float, claim: Claim | None = None) -> None:
        self.lease, self.claims, self.item, self.vm = lease, claims, item, vm
        # The claim as this agent last wrote it: each write is guarded by its ETag, no read.
        self.claim = claim
        self.interval = interval
        self.claim_lost = threading.Event()
        self.withdrawn = threading.Event()  # the job was cancelled: the message is spent
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"beat-{item.job_id[:20]}")

    def start(self) -> JobHeartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.lease.extend()
            try:
                self.claim = self.claims.heartbeat(self.item, self.vm, known=self.claim)
            except ClaimWithdrawn as exc:
                log.warning("job %s: %s; stopping the action", self.item.job_id, exc)
                self.withdrawn.set()
                self.claim_lost.set()
                return
            except ClaimLost as exc:
                log.warning("job %s: claim lost (%s); stopping", self.item.job_id, exc)
                self.claim_lost.set()
                return
            except AzureError as exc:
                log.warning("job %s: claim heartbeat failed: %s", self.item.job_id, exc)


class Worker:
    """Processes work items for one agent (shared by its slots; holds no per-job state)."""

    def __init__(self, config: AgentConfig, blobs: BlobServiceClient, claims: ClaimStore,
                 api: AppClient, handing_back: threading.Event | None = None) -> None:
        self.config = config
        self.blobs = blobs
        self.claims = claims
        self.api = api
        # Set when the VM is being evicted: every step in hand stops and goes back.
        self.handing_back = handing_back or threading.Event()

    # --- the whole step ----------------------------------------------------------------------

    def handle(self, item: WorkItem, lease: MessageLease, slot: int) -> str:
        """Process a decoded work item whose slot is taken; returns what happened (for logs)."""
        vm = self.config.vm_name
        try:
            claim = self.claims.claim(item, vm)
        except AlreadyFinished as exc:
            log.info("job %s step %s: %s; deleting the spent message", item.job_id,
                     item.step_key, exc)
            lease.delete()
            return "spent"
        except AlreadyClaimed as exc:
            log.info("job %s step %s: %s; leaving the message", item.job_id, item.step_key, exc)
            return "claimed-elsewhere"
        job_dir = self._job_dir(item, slot)
        beat = JobHeartbeat(lease, self.claims, item, vm,
                            self.config.job_heartbeat_seconds, claim).start()
        try:
            try:
                report = self.run_step(item, job_dir, beat)
            except HandedBack as exc:
                return self.hand_back(item, lease, str(exc), beat.claim)
            except StepAbandoned as exc:
                if beat.withdrawn.is_set():
                    lease.delete()  # the job was cancelled: nobody needs this item again
                    return "withdrawn"
                log.warning("job %s step %s: abandoned here: %s", item.job_id, item.step_key,
                            exc)
                return "abandoned"
            return self.report(item, report, lease, beat)
        finally:
            beat.stop()
            shutil.rmtree(job_dir, ignore_errors=True)

    def hand_back(self, item: WorkItem, lease: MessageLease, reason: str,
                  known: Claim | None = None) -> str:
        """Give the attempt up so another VM takes it now, not after the claim goes stale: the
        claim is released (a released claim is taken over at once, and the attempt is the same,
        so it counts as no failure) and the message is made visible again."""
        self._finish(item, ABANDONED, {"handedBack": reason[:200]}, known)
        lease.release()
        log.warning("job %s step %s: handed back: %s", item.job_id, item.step_key, reason)
        return "handed-back"

    def _job_dir(self, item: WorkItem, slot: int) -> Path:
        digest = hashlib.sha256(f"{item.job_id}/{item.step_key}".encode()).hexdigest()[:16]
        job_dir = paths.contained(self.config.work_dir, f"{JOB_DIR_PREFIX}{slot}-{digest}")
        shutil.rmtree(job_dir, ignore_errors=True)
        job_dir.mkdir(mode=0o700, parents=True)
        return job_dir

    # --- running ----------------------------------------------------------------------------

    def run_step(self, item: WorkItem, job_dir: Path, beat: JobHeartbeat) -> JobReport:
        """Download, run and upload; a failure of the input or the action is a failed report."""
        started = time.monotonic()
        report = self._run_step(item, job_dir, beat)
        report.duration_ms = int((time.monotonic() - started) * 1000)
        return report

    def _run_step(self, item: WorkItem, job_dir: Path, beat: JobHeartbeat) -> JobReport:
        template = self.config.actions.get(item.action)
        if template is None:
            return JobReport("failed", error=f"unknown action {item.action!r} on this agent "
                             f"(known: {', '.join(sorted(self.config.actions))})")
        try:
            out_name = paths.output_blob_name(item.blob_name, item.action)
        except paths.UnsafeNameError as exc:
            return JobReport("failed", error=f"unusable blob name: {exc}")
        input_path = paths.contained(job_dir, paths.local_name(item.blob_name, "in"))
        output_path = paths.contained(job_dir, paths.local_name(item.blob_name, "out"))

        bytes_in = self._download(item, input_path)
        if isinstance(bytes_in, JobReport):
            return bytes_in
        if beat.claim_lost.is_set():
            raise StepAbandoned("claim lost during download")
        if self.handing_back.is_set():
            raise HandedBack("the VM is being evicted")

        limit = self.config.max_output_bytes

        def on_tick() -> str | None:
            if beat.claim_lost.is_set():
                return "claim lost"
            if self.handing_back.is_set():
                return "the VM is being evicted"
            size = _file_size(output_path)
            if size is not None and size > limit:
                return f"output exceeded AGENT_MAX_OUTPUT_BYTES={limit}"
            return None

        command = actions.build_command(template, input_path, output_path)
        log.info("job %s step %s: running %s", item.job_id, item.step_key, item.action)
        result = actions.run(command, job_dir, self.config.action_timeout_seconds,
                             min(1.0, self.config.job_heartbeat_seconds), on_tick,
                             env={"VMPOOL_JOB_ID": item.job_id, "VMPOOL_ACTION": item.action,
                                  "VMPOOL_STEP": str(item.step),
                                  "VMPOOL_ATTEMPT": str(item.attempt)})
        if beat.claim_lost.is_set():
            raise StepAbandoned("claim lost while the action ran")
        if self.handing_back.is_set() and not result.succeeded:
            raise HandedBack("the VM is being evicted; the action was stopped")
        stderr_blob = self._upload_stderr(item, job_dir / actions.STDERR_FILE, out_name)
        report = self._action_report(item, result, output_path, out_name, bytes_in,
                                     stderr_blob)
        report.stderr_tail, report.stderr_blob = result.stderr_tail, stderr_blob
        return report

    def _action_report(self, item: WorkItem, result: actions.ActionResult, output_path: Path,
                       out_name: str, bytes_in: int, stderr_blob: str | None) -> JobReport:
        limit = self.config.max_output_bytes
        if not result.succeeded:
            reason = result.stopped or f"action exited with {result.exit_code}"
            error = reason + (f"\n{result.stderr_tail}" if result.stderr_tail else "")
            if stderr_blob:  # the row keeps the tail; last, so that bounding keeps it too
                error = error.rstrip("\n") + f"\n(whole stderr: {stderr_blob})"
            return JobReport("failed", exit_code=result.exit_code, error=error,
                             bytes_in=bytes_in)
        size = _file_size(output_path)
        if size is None:
            return JobReport("succeeded", exit_code=0, bytes_in=bytes_in)
        if size < 0:
            return JobReport("failed", exit_code=0, bytes_in=bytes_in,
                             error="the action's output is not a regular file")
        if size > limit:
            return JobReport("failed", exit_code=0, bytes_in=bytes_in,
                             error=f"output is {size} bytes, more than "
                                   f"AGENT_MAX_OUTPUT_BYTES={limit}; not uploaded")
        self._upload(item, output_path, out_name)
        return JobReport("succeeded", exit_code=0, bytes_in=bytes_in, bytes_out=size,
                         output=f"{self.config.results_container}/{out_name}")

    def _download(self, item: WorkItem, path: Path) -> int | JobReport:
        client = self.blobs.get_blob_client(item.container, item.blob_name)
        try:
            with path.open("xb") as handle:
                return client.download_blob().readinto(handle)
        except ResourceNotFoundError:
            return JobReport("failed", error=f"input blob {item.blob!r} not found")
        except HttpResponseError as exc:
            if exc.status_code == 400:  # a name storage will never accept: no retry helps
                return JobReport("failed", error=f"input blob {item.blob!r} cannot be read: "
                                 f"{exc.reason or exc.status_code}")
            raise StepAbandoned(f"download of the input failed: {exc}") from None
        except AzureError as exc:
            raise StepAbandoned(f"download of the input failed: {exc}") from None

    def _upload_stderr(self, item: WorkItem, path: Path, out_name: str) -> str | None:
        """The action's whole stderr as `<blob>.<action>.<attempt>.stderr`; None
        when it wrote nothing. Diagnostics only: a failed upload does not fail the step."""
        if not path.is_file() or path.stat().st_size == 0:
            return None
        name = f"{out_name.removesuffix('.out')}.{item.attempt}.stderr"
        try:
            self._upload(item, path, name)
        except StepAbandoned as exc:
            log.warning("job %s step %s: stderr not kept: %s", item.job_id, item.step_key, exc,
                        extra=self._attributes(item))
            return None
        return f"{self.config.results_container}/{name}"

    def _attributes(self, item: WorkItem) -> dict[str, Any]:
        return telemetry.step_attributes(item.job_id, self.config.vm_name, item.attempt,
                                         item.step, item.action)

    def _upload(self, item: WorkItem, path: Path, out_name: str) -> None:
        client = self.blobs.get_blob_client(self.config.results_container, out_name)
        metadata = {"jobId": item.job_id, "step": str(item.step), "attempt": str(item.attempt),
                    "action": item.action, "vm": self.config.vm_name}
        try:
            with path.open("rb") as handle:
                client.upload_blob(handle, overwrite=True, metadata=metadata)
        except AzureError as exc:
            raise StepAbandoned(f"upload of the output failed: {exc}") from None

    # --- reporting ----------------------------------------------------------------------------

    def report(self, item: WorkItem, report: JobReport, lease: MessageLease,
               beat: JobHeartbeat) -> str:
        """Tell the app; on its acknowledgement finish the claim and delete the message."""
        body = report.body(item)
        try:
            self.api.done(item.job_id, body)
        except ApiRefused as exc:
            beat.stop()
            if exc.spent:
                log.warning("job %s step %s: %s; the step is spent, deleting the message",
                            item.job_id, item.step_key, exc)
                self._finish(item, ABANDONED, {"refused": exc.status}, beat.claim)
                lease.delete()
                return "refused-spent"
            log.error("job %s step %s: %s; leaving the message", item.job_id, item.step_key,
                      exc)
            return "refused"
        except ApiUnavailable as exc:
            log.error("job %s step %s: report not delivered (%s); leaving the message",
                      item.job_id, item.step_key, exc)
            return "unreported"
        beat.stop()
        outcome = {"status": report.status, "exitCode": report.exit_code,
                   "output": report.output, "bytesIn": report.bytes_in,
                   "bytesOut": report.bytes_out, "durationMs": report.duration_ms}
        self._finish(item, DONE if report.status == "succeeded" else FAILED, outcome,
                     beat.claim)
        lease.delete()
        extra = {**self._attributes(item), "step.outcome": report.status,
                 "step.duration_ms": report.duration_ms}
        if report.stderr_tail:
            extra["stderr.tail"] = report.stderr_tail
        if report.stderr_blob:
            extra["stderr.blob"] = report.stderr_blob
        log.log(logging.INFO if report.status == "succeeded" else logging.WARNING,
                "job %s step %s: %s, acknowledged", item.job_id, item.step_key, report.status,
                extra=extra)
        return report.status

    def _finish(self, item: WorkItem, state: str, outcome: dict[str, Any],
                known: Claim | None = None) -> None:
        try:
            self.claims.finish(item.job_id, item.step_key, self.config.vm_name, state,
                               {k: v for k, v in outcome.items() if v is not None},
                               known=known)
        except ClaimError as exc:
            log.info("job %s step %s: claim not finished here: %s", item.job_id,
                     item.step_key, exc)
        except AzureError as exc:
            log.warning("job %s step %s: could not finish the claim: %s", item.job_id,
                        item.step_key, exc)


def _file_size(path: Path) -> int | None:
    """Size of a regular file, None if missing, -1 if it is something else (link, folder)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else -1
