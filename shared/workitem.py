"""The work item: what the app puts on the `work` queue and an agent pulls.

One work item is one attempt at one step of one job. It carries an HMAC token over its identity
so the done callback can prove it answers a work item the app really issued (a forged or stale
callback cannot complete someone else's job).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

MAX_MESSAGE_BYTES = 48 * 1024  # a queue message is at most 64 KiB once base64 encoded
_ID_RE = re.compile(r"^[A-Za-z0-9._:@-]{1,200}$")


class WorkItemError(ValueError):
    """A work item is malformed (bad JSON, missing or ill-typed fields)."""


@dataclass(frozen=True)
class WorkItem:
    job_id: str          # stable id of the job (one file through the pipeline)
    instance_id: str     # the process_file orchestration that waits for this step
    step: int            # index into the pipeline's actions, from 0
    action: str          # name of the action the agent runs
    blob: str            # "container/name" of the input blob
    attempt: int         # 1 for the first try; a retry is a new work item
    token: str = ""      # HMAC over the fields above; see `sign`

    @property
    def step_key(self) -> str:
        """Row key of this attempt's claim: steps and attempts sort in order."""
        return f"{self.step:03d}-{self.attempt:03d}"

    def signing_payload(self) -> bytes:
        return "\n".join([self.job_id, self.instance_id, str(self.step), self.action, self.blob,
                          str(self.attempt)]).encode()

    def signed(self, key: str) -> WorkItem:
        return WorkItem(**{**asdict(self), "token": sign(self, key)})

    def to_json(self) -> str:
        body = {"jobId": self.job_id, "instanceId": self.instance_id, "step": self.step,
                "action": self.action, "blob": self.blob, "attempt": self.attempt,
                "token": self.token}
        text = json.dumps(body, separators=(",", ":"))
        if len(text.encode()) > MAX_MESSAGE_BYTES:
            raise WorkItemError("work item is larger than a queue message allows")
        return text

    @classmethod
    def from_json(cls, text: str | bytes) -> WorkItem:
        try:
            body = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise WorkItemError(f"work item is not JSON: {exc}") from None
        return cls.from_dict(body)

    @classmethod
    def from_dict(cls, body: Any) -> WorkItem:
        if not isinstance(body, dict):
            raise WorkItemError("work item must be a JSON object")
        try:
            item = cls(job_id=body["jobId"], instance_id=body["instanceId"], step=body["step"],
                       action=body["action"], blob=body["blob"], attempt=body["attempt"],
                       token=body.get("token", ""))
        except KeyError as exc:
            raise WorkItemError(f"work item lacks field {exc.args[0]!r}") from None
        for name in ("job_id", "instance_id"):
            value = getattr(item, name)
            if not isinstance(value, str) or not _ID_RE.match(value):
                raise WorkItemError(f"work item field {name} is not a valid id")
        for name in ("step", "attempt"):
            value = getattr(item, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1000:
                raise WorkItemError(f"work item field {name} must be an integer from 0 to 999")
        if not isinstance(item.action, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}",
                                                                item.action):
            raise WorkItemError("work item field action is not a valid action name")
        if not isinstance(item.blob, str) or "/" not in item.blob or len(item.blob) > 1100:
            raise WorkItemError("work item field blob must be 'container/name'")
        if not isinstance(item.token, str):
            raise WorkItemError("work item field token must be a string")
        return item

    @property
    def container(self) -> str:
        return self.blob.split("/", 1)[0]

    @property
    def blob_name(self) -> str:
        return self.blob.split("/", 1)[1]


def sign(item: WorkItem, key: str) -> str:
    return hmac.new(key.encode(), item.signing_payload(), hashlib.sha256).hexdigest()


def verify(item: WorkItem, token: str, key: str) -> bool:
    """Constant-time check that `token` was issued for exactly this work item."""
    # compare_digest refuses non-ASCII text (TypeError): such a token was never issued.
    return bool(token) and token.isascii() and hmac.compare_digest(sign(item, key), token)
