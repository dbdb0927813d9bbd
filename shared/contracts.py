"""The contracts between the app's parts, each defined once: names, payloads, states.

Blueprints register functions under these names and orchestrators call them by the same
constants, so a renamed activity cannot leave a caller behind. The payloads that travel through
Durable (orchestration inputs, activity requests and results, external events) are typed here
as `TypedDict`s: they stay plain JSON objects on the wire (an instance that is already running
replays them unchanged) while type checkers and readers see one definition of each field.

Standard library only: the VM agent ships this module (see agent/Dockerfile) and uses the same
VM name rule as the pool, so an agent never accepts a name the pool refuses.
"""
from __future__ import annotations

import re
from enum import Enum
from typing import TYPE_CHECKING, Any, TypedDict

from typing_extensions import NotRequired

if TYPE_CHECKING:
    from shared.settings import Settings

# --- function names: orchestrators and activities ---------------------------------------------

PROCESS_FILE = "process_file"   # one file through every action
PROCESS_RUN = "process_run"     # a batch of files, fanned out to PROCESS_FILE
POOL_CHANGE = "pool_change"     # add, remove, start or stop pool VMs
ORCHESTRATORS = (PROCESS_FILE, PROCESS_RUN, POOL_CHANGE)

START_JOB = "start_job_activity"
ISSUE_WORK_ITEM = "issue_work_item_activity"
FINISH_JOB = "finish_job_activity"
REQUEST_CAPACITY = "request_capacity_activity"
COLLECT_DATA = "collect_data_activity"
LIST_FILES = "list_files_activity"
RECORD_RUN = "record_run_activity"
CHANGE_STEP = "change_step_activity"
RECORD_CHANGE = "record_change_activity"
RUN_STATE = "run_state_activity"          # has the run been cancelled?
DELIVER_WEBHOOK = "deliver_webhook_activity"  # one attempt at a callbackUrl
ACTIVITIES = (START_JOB, ISSUE_WORK_ITEM, FINISH_JOB, REQUEST_CAPACITY, COLLECT_DATA,
              LIST_FILES, RECORD_RUN, CHANGE_STEP, RECORD_CHANGE, RUN_STATE, DELIVER_WEBHOOK)

# --- external events ---------------------------------------------------------------------------

CANCEL_EVENT = "cancel"  # raised by the cancel endpoints on a job's or a change's orchestration

# --- statuses ----------------------------------------------------------------------------------

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
COMPLETED = "completed"
CANCELLED = "cancelled"
JOB_STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)   # a job row's `status`
JOB_FINISHED = (SUCCEEDED, FAILED, CANCELLED)
JOB_RETRYABLE = (FAILED, CANCELLED)   # a job that may run again from its kept original
STEP_STATUSES = (SUCCEEDED, FAILED)                   # what an agent reports for one step

RUN_STATUSES = (RUNNING, COMPLETED, CANCELLED)        # a run row's `status`

CHANGE_TYPES = ("pool.add", "pool.remove", "pool.start", "pool.stop")
# The steps each change type runs per VM, in order.
CHANGE_PLANS: dict[str, tuple[str, ...]] = {
    "pool.add": ("provision", "register"),
    "pool.remove": ("drain", "wait_idle", "deallocate", "delete", "unregister"),
    "pool.start": ("start",),
    "pool.stop": ("drain", "wait_idle", "deallocate"),
}
PENDING, DONE = "pending", "done"
CHANGE_STEP_STATUSES = (PENDING, RUNNING, DONE, FAILED)
CHANGE_STATUSES = (PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED)
# The `operation` of a start or deallocate step once the power change was asked for: the next
# poll only waits for the machine. (The value is kept as it was for instances in flight.)
POWER_REQUESTED = "waiting"


class _States(str, Enum):
    """String states that print as their value (in messages, logs and f-strings)."""

    def __str__(self) -> str:
        return self.value


class VmState(_States):
    """A pool VM's state in the pool table; the policy reasons over the same values."""

    DEALLOCATED = "deallocated"
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    DEALLOCATING = "deallocating"
    FAILED = "failed"
    # A spot VM whose capacity Azure took back (evicted, or a start refused for lack of spot
    # capacity); not started again for SPOT_BACKOFF_SECONDS.
    EVICTED = "evicted"

    def __str__(self) -> str:
        return self.value


class VmPriority(str, Enum):
    """A pool member's Azure priority: on-demand (`Regular`) or `Spot`."""

    REGULAR = "regular"
    SPOT = "spot"


class PowerState(_States):
    """What a backend says a machine is doing (Azure's PowerState codes plus "unknown")."""

    RUNNING = "running"
    STARTING = "starting"
    STOPPED = "stopped"
    DEALLOCATED = "deallocated"
    DEALLOCATING = "deallocating"
    UNKNOWN = "unknown"


# --- VM names ----------------------------------------------------------------------------------

# Azure VM names: letters, digits, '-', '_', '.'; start with a letter or digit; not ending in
# '.' or '-'. The same rule keeps names safe as table RowKeys (no '/', '\\', '#', '?', quotes).
VM_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,62}[A-Za-z0-9_])?$")


class InvalidVmName(ValueError):
    """A VM name that Azure (and the pool table) cannot hold."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"{name!r} is not a valid VM name (1-64 letters, digits, '-', '_' or '.', starting "
            "with a letter or digit and not ending in '-' or '.')")
        self.name = name


def is_valid_vm_name(name: object) -> bool:
    return isinstance(name, str) and bool(VM_NAME_RE.match(name))


def validate_vm_name(name: object) -> str:
    """Return `name` if it is a valid VM name, else raise `InvalidVmName`."""
    if not is_valid_vm_name(name):
        raise InvalidVmName(str(name))
    return name  # type: ignore[return-value]


# --- payloads of the file pipeline -------------------------------------------------------------


class FileJob(TypedDict):
    """`process_file`'s input: everything it needs, fixed when it starts."""

    jobId: str
    instanceId: str
    container: str
    blob: str
    runId: str
    actions: list[str]
    maxAttempts: int
    timeoutS: int
    backoffS: float
    etag: NotRequired[str]  # the version of the blob the trigger saw (quoted), when known


class WorkRequest(TypedDict):
    """`issue_work_item_activity`'s input: one attempt of one step."""

    jobId: str
    instanceId: str
    step: int
    action: str
    blob: str
    attempt: int
    start: NotRequired[FileJob]  # from 2.0, on the job's first item: record the job row first


class IssuedWork(TypedDict):
    """`issue_work_item_activity`'s result: the event the orchestration waits for."""

    jobId: str
    step: int
    attempt: int
    eventName: str


class StepResult(TypedDict):
    """The done callback's event payload: what the VM reported for one attempt."""

    status: str          # one of STEP_STATUSES
    vm: str
    exitCode: int | None
    error: str
    output: str          # "container/name" of the step's output blob, or ""
    bytesIn: int
    bytesOut: int
    durationMs: int


class JobOutcome(TypedDict):
    """`finish_job_activity`'s input: how the job ended."""

    jobId: str
    status: str
    error: str
    bytesIn: int
    bytesOut: int
    output: str
    vm: str


class RunFile(TypedDict):
    """One blob a run covers (`list_files_activity`, `collect_data_activity`)."""

    container: str
    name: str
    etag: str
    size: int
    instanceId: str


class RunSummary(TypedDict, total=False):
    files: int
    succeeded: int
    failed: int
    bytesIn: int
    bytesOut: int
    runId: str
    status: str
    startedAt: str
    finishedAt: str
    durationS: float


class RunInput(TypedDict, total=False):
    """`process_run`'s input. Either `source` (collect first), or `prefix`/`names` (list).

    `files`, `offset`, `startedAt` and `summary` are added by the run itself and carried
    through `continue_as_new` from one chunk to the next.
    """

    runId: str
    container: str
    jobTemplate: FileJob
    source: str
    scheduledAt: str
    prefix: str | None
    names: list[str] | None
    files: list[RunFile]
    offset: int
    startedAt: str
    summary: RunSummary


def done_event_name(step: int, attempt: int) -> str:
    """Each attempt waits on its own event, so a late answer to an old attempt is ignored."""
    return f"done-{step}-{attempt}"


def file_job_input(settings: Settings, container: str, blob: str, instance_id: str,
                   run_id: str = "", etag: str = "") -> FileJob:
    """Everything `process_file` needs, fixed at start (a settings change never alters a job
    already running)."""
    job: FileJob = {"jobId": instance_id, "instanceId": instance_id, "container": container,
                    "blob": blob, "runId": run_id, "actions": list(settings.pipeline_actions),
                    "maxAttempts": settings.max_attempts,
                    "timeoutS": settings.job_timeout_seconds,
                    "backoffS": settings.retry_backoff_seconds}
    if etag:
        job["etag"] = etag
    return job


def run_input(settings: Settings, run_id: str, *, source: str | None = None,
              scheduled_at: str | None = None, prefix: str | None = None,
              names: list[str] | None = None) -> RunInput:
    """`process_run`'s input: a collector run (`source`) or a run over existing blobs."""
    run: RunInput = {"runId": run_id, "container": settings.data_container,
                     "jobTemplate": file_job_input(settings, settings.data_container, "", "")}
    if source is not None:
        run.update(source=source, scheduledAt=scheduled_at or "")
    else:
        run.update(prefix=prefix, names=names)
    return run


# --- payloads of pool changes ------------------------------------------------------------------


class ChangeStep(TypedDict):
    vm: str
    step: str       # one of the names in CHANGE_PLANS
    status: str     # one of CHANGE_STEP_STATUSES


class ChangeInput(TypedDict, total=False):
    """`pool_change`'s input (and, with `status` and `error`, its output)."""

    changeId: str
    changeType: str
    vms: list[str]
    spec: dict[str, Any]
    steps: list[ChangeStep]
    status: str
    error: str


class ChangeStepRequest(TypedDict):
    """`change_step_activity`'s input: do the step, or poll the operation it began."""

    step: ChangeStep
    spec: dict[str, Any]
    operation: str | None


class ChangeStepResult(TypedDict, total=False):
    done: bool
    operation: str | None   # what to hand back on the next poll while not done
    error: str              # set when the step failed (done is then True)
    retryAfter: float       # seconds to wait before the next poll (throttled)


def step_done(error: str = "") -> ChangeStepResult:
    """The step is over: succeeded, or failed with `error`."""
    return {"done": True, "operation": None, "error": error}


def step_pending(operation: str | None, retry_after: float | None = None) -> ChangeStepResult:
    """Not done yet: poll again (after `retry_after` seconds, or the orchestrator's interval)."""
    result: ChangeStepResult = {"done": False, "operation": operation, "error": ""}
    if retry_after is not None:
        result["retryAfter"] = retry_after
    return result
