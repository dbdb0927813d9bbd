"""A received queue message held by this agent, and its decoding.

While a job runs the message must stay invisible, so the job's heartbeat pushes its visibility
out again and again; each update returns a new pop receipt, which the later delete needs. If an
update fails because the message is gone or its receipt is stale (another agent received it after
our lease lapsed), the handle is lost: the claim, not the message, then decides who finishes.
"""
from __future__ import annotations

import base64
import binascii
import logging
import threading

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.storage.queue import QueueClient, QueueMessage

from shared.workitem import WorkItem, WorkItemError

log = logging.getLogger(__name__)


class MalformedMessage(ValueError):
    """A queue message is not base64 text of a valid work item."""


def decode(content: object) -> WorkItem:
    """Base64 text -> work item; `MalformedMessage` for anything else."""
    if not isinstance(content, str):
        raise MalformedMessage(f"message content is {type(content).__name__}, not text")
    try:
        text = base64.b64decode(content.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError) as exc:
        raise MalformedMessage(f"message is not base64 UTF-8 text: {exc}") from None
    try:
        return WorkItem.from_json(text)
    except WorkItemError as exc:
        raise MalformedMessage(str(exc)) from None


class MessageLease:
    """Visibility extension and deletion of one received message, safe across threads."""

    def __init__(self, queue: QueueClient, message: QueueMessage, visibility: int) -> None:
        self.queue = queue
        self.id = message.id
        self.dequeue_count = message.dequeue_count or 0
        self.visibility = visibility
        self._receipt = message.pop_receipt
        self._lock = threading.Lock()
        self.lost = False

    def extend(self) -> bool:
        """Push the message's visibility out by another timeout; False once the handle is lost."""
        with self._lock:
            if self.lost:
                return False
            try:
                updated = self.queue.update_message(self.id, pop_receipt=self._receipt,
                                                    visibility_timeout=self.visibility)
            except ResourceNotFoundError:
                log.warning("message %s: lost its lease (received elsewhere or deleted)", self.id)
                self.lost = True
                return False
            except AzureError as exc:
                log.warning("message %s: could not extend visibility: %s", self.id, exc)
                return True
            self._receipt = updated.pop_receipt
            return True

    def release(self) -> None:
        """Make the message visible again now (we are not taking it after all)."""
        with self._lock:
            if self.lost:
                return
            try:
                self.queue.update_message(self.id, pop_receipt=self._receipt,
                                          visibility_timeout=0)
            except AzureError as exc:
                log.info("message %s: could not release it early: %s", self.id, exc)
            self.lost = True

    def delete(self) -> bool:
        """Delete the spent message; False if it could not be (it will come back and be
        recognised as finished through its claim)."""
        with self._lock:
            if self.lost:
                log.info("message %s: not deleted here, the lease was lost", self.id)
                return False
            try:
                self.queue.delete_message(self.id, self._receipt)
            except AzureError as exc:
                log.warning("message %s: delete failed: %s", self.id, exc)
                return False
            self.lost = True
            return True
