"""Queue triggers: base64 messages in batches, retries, poison queue and polling backoff.

Each poll takes one page of up to `batchSize` messages (host.json `extensions.queues`), and
the next page is fetched once no more than `newBatchThreshold` are still running. Every
message is decoded on its own (a message that is not base64 fails alone, like a binding
error, instead of breaking the batch); messages run concurrently. Success deletes the
message, a failure makes it visible again after `visibilityTimeout`, and a message that
failed `maxDequeueCount` times moves to `NAME-poison`. An empty poll doubles the wait, up to
`maxPollingInterval`, unless a function of the same host writes to the queue: the
`QueueWatcher` then wakes the listener at once, as the host's shared queue watcher does.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.functions import meta
from azure.functions.queue import QueueMessageInConverter
from azure.storage.queue import QueueMessage

from devhost.config import HostConfig
from devhost.errors import InvocationError
from devhost.invoker import Invoker, base_type, to_datum
from devhost.loader import FunctionSpec

log = logging.getLogger("devhost")
MIN_POLL_SECONDS = 0.1


class BadMessageError(ValueError):
    """A queue message is not valid base64 text."""


def decode_message(content: str) -> bytes:
    """The body of a base64 queue message."""
    try:
        return base64.b64decode(content.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise BadMessageError(f"message is not base64: {exc}") from None


class QueueWatcher:
    """Wakes the listeners of a queue when a function of this host wrote to it.

    The storage queues extension does this with its per-host `SharedQueueWatcher`: the queue
    output binding (`QueueAsyncCollector.AddAsync` in `QueuesExtensionConfigProvider.cs`)
    calls `Notify(queueName)` after each message, and every listener registered for that
    name polls at once with its backoff reset. Here a queue is named by its account's queue
    endpoint and its name, so a write to a same-named queue elsewhere wakes nothing.
    Everything runs on the host's event loop.
    """

    def __init__(self) -> None:
        self._events: dict[tuple[str, str], list[asyncio.Event]] = {}

    def register(self, account: str, queue: str) -> asyncio.Event:
        """The event set whenever `queue` on `account` is written by this host."""
        event = asyncio.Event()
        self._events.setdefault((account, queue.lower()), []).append(event)
        return event

    def notify(self, account: str, queue: str) -> None:
        for event in self._events.get((account, queue.lower()), ()):
            event.set()


class QueueListener:
    """Polls one queue for one function until `stop` is set; `wake` (from the host's
    `QueueWatcher`) ends a backoff wait early."""

    def __init__(self, spec: FunctionSpec, invoker: Invoker, config: HostConfig,
                 stop: asyncio.Event, max_poll_seconds: float | None = None,
                 watch: Callable[[str | None, str], asyncio.Event] | None = None) -> None:
        self.spec = spec
        self.invoker = invoker
        self.stop = stop
        self.queue = str(spec.trigger["queueName"]).lower()
        self.connection = spec.trigger.get("connection")
        self.batch_size = config.queue_batch_size
        self.new_batch_threshold = config.queue_new_batch_threshold
        self.max_dequeue = config.queue_max_dequeue_count
        self.retry_visibility = int(config.queue_visibility_timeout.total_seconds())
        self.max_poll = (max_poll_seconds if max_poll_seconds is not None
                         else config.queue_max_polling_interval.total_seconds())
        timeout = config.function_timeout.total_seconds() if config.function_timeout else 600
        self.lease_seconds = int(min(max(timeout + 30, 60), 7 * 24 * 3600))
        self.wake = watch(self.connection, self.queue) if watch else asyncio.Event()
        #: The current empty-poll wait: its length and when it ends (`time.monotonic()`),
        #: None while polling or running messages.
        self.wait_seconds = 0.0
        self.wait_ends: float | None = None
        self.wakeups = 0  # waits cut short by a write of this host

    def _client(self) -> Any:
        return self.invoker.storage.raw_queue(self.connection, self.queue)

    def _receive(self) -> list[QueueMessage]:
        pages = self._client().receive_messages(
            messages_per_page=self.batch_size, max_messages=self.batch_size,
            visibility_timeout=self.lease_seconds).by_page()
        try:
            return list(next(pages))
        except StopIteration:
            return []
        except ResourceNotFoundError:
            return []

    def _delete(self, message: QueueMessage) -> None:
        self._client().delete_message(message.id, message.pop_receipt)

    def _release(self, message: QueueMessage) -> None:
        self._client().update_message(message.id, message.pop_receipt,
                                      visibility_timeout=self.retry_visibility)

    def _to_poison(self, message: QueueMessage) -> None:
        poison = f"{self.queue}-poison"
        self.invoker.storage.ensure_queue(self.connection, poison)
        self.invoker.storage.raw_queue(self.connection, poison).send_message(message.content)
        self._delete(message)

    def _argument(self, message: QueueMessage, body: bytes) -> Any:
        kind = base_type(self.spec.annotation(self.spec.trigger["name"]))
        if kind is bytes:
            return body
        if kind is str:
            return body.decode("utf-8")
        metadata = {
            "Id": message.id, "DequeueCount": message.dequeue_count,
            "ExpirationTime": message.expires_on.isoformat() if message.expires_on else None,
            "InsertionTime": message.inserted_on.isoformat() if message.inserted_on else None,
            "NextVisibleTime": (message.next_visible_on.isoformat()
                                if message.next_visible_on else None),
            "PopReceipt": message.pop_receipt,
        }
        datums = {k: (meta.Datum(v, "int") if isinstance(v, int) else to_datum(v))
                  for k, v in metadata.items() if v is not None}
        return QueueMessageInConverter.decode(meta.Datum(body, "bytes"),
                                              trigger_metadata=datums)

    async def handle(self, message: QueueMessage) -> bool:
        """Process one message; True when it succeeded (and was deleted)."""
        io = self.invoker.io
        ok = False
        if (message.dequeue_count or 0) > self.max_dequeue:
            await io(self._to_poison, message)
            return False
        try:
            body = decode_message(message.content or "")
            metadata: dict[str, Any] = {}
            try:
                parsed = json.loads(body)
            except (ValueError, UnicodeDecodeError, RecursionError):
                parsed = None
            if isinstance(parsed, dict):
                metadata.update(parsed)
            metadata.update({"QueueTrigger": body.decode("utf-8", errors="replace"),
                             "Id": message.id, "DequeueCount": message.dequeue_count})
            await self.invoker.invoke(self.spec, self._argument(message, body), metadata,
                                      f"New queue message detected on '{self.queue}'.")
            ok = True
        except BadMessageError as exc:
            log.error("queue %s message %s: %s", self.queue, message.id, exc)
        except InvocationError:
            pass  # logged by the invoker
        except UnicodeDecodeError as exc:
            log.error("queue %s message %s: body is not UTF-8 text: %s", self.queue,
                      message.id, exc)
        try:
            if ok:
                await io(self._delete, message)
            elif (message.dequeue_count or 0) >= self.max_dequeue:
                log.warning("queue %s message %s failed %s times: moved to %s-poison",
                            self.queue, message.id, message.dequeue_count, self.queue)
                await io(self._to_poison, message)
            else:
                await io(self._release, message)
        except ResourceNotFoundError as exc:
            log.warning("queue %s message %s: could not settle: %s", self.queue, message.id,
                        exc)
        return ok

    async def run(self) -> None:
        """Fetch a new page whenever no more than `newBatchThreshold` messages are still
        running (as the host does), back off while the queue is empty, drain on stop."""
        delay = MIN_POLL_SECONDS
        running: set[asyncio.Task[bool]] = set()
        stop_wait = asyncio.ensure_future(self.stop.wait())
        try:
            while not self.stop.is_set():
                if len(running) > self.new_batch_threshold:
                    await asyncio.wait(running | {stop_wait},
                                       return_when=asyncio.FIRST_COMPLETED)
                    running = {t for t in running if not t.done()}
                    continue
                self.wake.clear()  # a write from now on is seen by this poll or the next
                try:
                    messages = await self.invoker.io(self._receive)
                except Exception as exc:  # noqa: BLE001 - keep polling through hiccups
                    log.warning("queue %s: poll failed: %s", self.queue, exc)
                    messages = []
                if messages:
                    delay = MIN_POLL_SECONDS
                    running |= {asyncio.ensure_future(self.handle(m)) for m in messages}
                    continue
                wake_wait = asyncio.ensure_future(self.wake.wait())
                self.wait_seconds, self.wait_ends = delay, time.monotonic() + delay
                try:
                    await asyncio.wait(running | {stop_wait, wake_wait}, timeout=delay,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    wake_wait.cancel()
                    self.wait_ends = None
                running = {t for t in running if not t.done()}
                if self.wake.is_set():  # the host wrote to this queue: poll now, from the start
                    self.wakeups += 1
                    delay = MIN_POLL_SECONDS
                else:
                    delay = min(delay * 2, max(self.max_poll, MIN_POLL_SECONDS))
        finally:
            stop_wait.cancel()
            if running:
                await asyncio.wait(running)
