"""The agent's life: one receiver feeding the slots, plus the VM heartbeat and idle requests.

The receiver asks the queue for as many messages as there are free slots (one request, with a
visibility timeout), takes a slot in the pool table for each and hands the work item to a free
slot's thread, which runs it through the `Worker`. It never receives while every slot is busy:
it waits until a slot finishes. An empty queue makes it poll with growing pauses. The main
thread beats the VM's heartbeat (a pool member's row, or for an agent outside
the pool such as a Kubernetes pod, its ephemeral worker row) and, once nothing has been worked
on for the idle time, asks the app once per idle period to shut the VM down (a pool member) or
exits (`AGENT_EXIT_WHEN_IDLE`). `stop()` (SIGTERM) lets the jobs in hand finish and takes no
new messages. On a spot VM the main thread also watches Azure's Scheduled Events: at a Preempt
notice the agent takes nothing new, hands the work in hand back at once (action stopped, claim
released, message visible again), tells the app and acknowledges the event, all well inside
the 30 s notice.
"""
from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from azure.core.exceptions import AzureError, ResourceNotFoundError

from agent import __version__
from agent.api import ApiError, AppClient
from agent.config import AgentConfig
from agent.lease import MalformedMessage, MessageLease, decode
from agent.scheduled_events import ScheduledEvent, ScheduledEvents
from agent.upgrade import UpgradeError, Upgrader
from agent.worker import JOB_DIR_PREFIX, Worker
from shared.claims import ClaimStore
from shared.clock import utcnow
from shared.pool.registry import InvalidTransition, OwnRow, PoolRegistry, RegistryError
from shared.pool.workers import RUNNING, STOPPED, WorkerRegistry

log = logging.getLogger(__name__)
MAX_RECEIVE = 32  # the most messages one queue request may return


class Activity:
    """Jobs in hand and when the last one ended: the agent is idle when both say so."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active = 0
        self.last_busy = time.monotonic()

    def begin(self) -> None:
        with self._lock:
            self.active += 1
            self.last_busy = time.monotonic()

    def end(self) -> None:
        with self._lock:
            self.active -= 1
            self.last_busy = time.monotonic()

    def idle_for(self) -> float:
        """Seconds without any job in hand (0 while one runs)."""
        with self._lock:
            return 0.0 if self.active else time.monotonic() - self.last_busy


class Agent:
    """Wires the clients together and runs the slot loops until stopped."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        conn = config.storage
        # A raw client (no decode policy): each message is decoded here, so one bad message
        # cannot make a whole receive fail.
        self.queue = conn.queue_service().get_queue_client(config.work_queue)
        self.poison = conn.queue_service().get_queue_client(f"{config.work_queue}-poison")
        self.claims = ClaimStore(conn.table_service().get_table_client(config.claim_table),
                                 stale_after=timedelta(seconds=config.claim_stale_seconds))
        vm_table = conn.table_service().get_table_client(config.vm_table)
        self.registry = PoolRegistry(vm_table)
        self.own_row = OwnRow(self.registry, config.vm_name)  # claims, releases, heartbeats
        self.workers = WorkerRegistry(vm_table)  # where an agent outside the pool shows up
        self.started_at = utcnow()
        self.api = AppClient(config.api_base_url, config.vm_name, config.function_key,
                             retry_seconds=config.api_retry_seconds,
                             timeout_seconds=config.api_timeout_seconds)
        self.handing_back = threading.Event()
        self.worker = Worker(config, conn.blob_service(), self.claims, self.api,
                             self.handing_back)
        self.events = (ScheduledEvents(config.scheduled_events_url, config.vm_name)
                       if config.scheduled_events_url else None)
        self.activity = Activity()
        self.upgrader = (Upgrader(conn.blob_service(), config.package_container,
                                  config.install_dir, __version__)
                         if config.package_container and config.install_dir else None)
        self.upgrade_to: Path | None = None  # a prepared release to restart on once drained
        self.stopping = threading.Event()
        self.outcomes: dict[str, int] = {}
        self._outcome_lock = threading.Lock()
        # Slots without a job, and the hand-over to each slot's thread (None: end the thread).
        self._free_slots = list(range(config.slots))
        self._free_lock = threading.Lock()
        self._slot_freed = threading.Event()  # a slot finished (or stopping): receive again
        self._inboxes: list[queue.SimpleQueue] = [queue.SimpleQueue()
                                                  for _ in range(config.slots)]

    # --- control ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Take no new messages; the jobs in hand finish and `run` returns."""
        if not self.stopping.is_set():
            log.info("stopping: finishing the work in hand, taking nothing new")
        self.stopping.set()
        self._slot_freed.set()  # a receiver waiting for a free slot ends now

    def run(self) -> None:
        """Run until `stop()`; returns once every slot has finished its job in hand."""
        cfg = self.config
        cfg.work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._clean_work_dir()
        self._reset_busy_slots()
        log.info("agent %s %s up: %s", cfg.vm_name, __version__, cfg.describe())
        if self._check_release("boot") and self.upgrade_to is not None:
            self.upgrader.switch_and_restart(self.upgrade_to)  # nothing taken yet: no drain
        if not cfg.function_key:
            log.warning("AGENT_FUNCTION_KEY is empty: calls to the app carry no function key")
        slots = [threading.Thread(target=self._slot_thread, args=(i,), name=f"slot-{i}")
                 for i in range(cfg.slots)]
        slots.append(threading.Thread(target=self._receive_loop, name="receiver"))
        for thread in slots:
            thread.start()
        next_beat = next_look = 0.0
        next_release_check = time.monotonic() + cfg.upgrade_check_seconds
        last_idle_call = time.monotonic()
        tick = min(1.0, cfg.heartbeat_seconds, max(cfg.idle_seconds, 0.1),
                   cfg.scheduled_events_seconds)
        while any(t.is_alive() for t in slots):
            now = time.monotonic()
            if now >= next_beat:
                self._vm_heartbeat()
                next_beat = now + cfg.heartbeat_seconds
            if self.events is not None and not self.handing_back.is_set() and now >= next_look:
                next_look = now + cfg.scheduled_events_seconds
                event = self.events.ending()
                if event is not None:
                    self._evicted(event, slots)
            if (self.upgrader is not None and not self.stopping.is_set()
                    and now >= next_release_check and self.activity.idle_for() > 0):
                next_release_check = now + cfg.upgrade_check_seconds
                if self._check_release("idle"):
                    self.stop()  # drain: what is in hand finishes, then the restart
            if not self.stopping.is_set() and cfg.idle_seconds > 0:
                idle = self.activity.idle_for()
                if idle >= cfg.idle_seconds and now - last_idle_call >= cfg.idle_seconds:
                    last_idle_call = now
                    if cfg.use_pool:  # only a pool member has a machine the app may stop
                        self._request_idle(idle)
                    if cfg.exit_when_idle:
                        log.info("idle for %d s: exiting (AGENT_EXIT_WHEN_IDLE)", idle)
                        self.stop()
            for thread in slots:
                thread.join(timeout=tick / len(slots))
        self._vm_heartbeat(final=self.upgrade_to is None)
        self.api.close()
        if self.events is not None:
            self.events.close()
        log.info("agent %s stopped: %s", cfg.vm_name, self.outcomes)
        if self.upgrade_to is not None and self.upgrader is not None \
                and not self.handing_back.is_set():
            self.upgrader.switch_and_restart(self.upgrade_to)  # drained: nothing in hand

    def _check_release(self, when: str) -> bool:
        """True when another agent version is published and prepared (`upgrade_to` set)."""
        if self.upgrader is None:
            return False
        release = self.upgrader.newer()
        if release is None:
            return False
        log.info("agent %s is published (running %s); preparing it (%s)", release.version,
                 __version__, when)
        try:
            self.upgrade_to = self.upgrader.prepare(release)
        except UpgradeError as exc:
            log.warning("%s; staying on %s", exc, __version__)
            return False
        return True

    HANDBACK_WAIT_S = 15.0  # of the ~30 s notice: the slots' hand-back, then the app is told

    def _evicted(self, event: ScheduledEvent, slots: list[threading.Thread]) -> None:
        """Azure will evict this VM: take nothing new, hand the work in hand back, tell the app,
        then acknowledge the event so Azure need not wait out the notice."""
        log.warning("scheduled event %s (%s, not before %s): handing the work back",
                    event.event_id, event.event_type, event.not_before or "now")
        self.handing_back.set()
        self.stop()
        deadline = time.monotonic() + self.HANDBACK_WAIT_S
        while any(t.is_alive() for t in slots) and time.monotonic() < deadline:
            for thread in slots:
                thread.join(timeout=0.1)
        if self.config.use_pool:
            try:
                self.api.evicted(event.event_id)
            except ApiError as exc:
                log.warning("could not tell the app about the eviction: %s", exc)
        if self.events is not None and self.events.acknowledge(event):
            log.info("scheduled event %s acknowledged", event.event_id)

    # --- the receiver and the slots -----------------------------------------------------------

    def _receive_loop(self) -> None:
        """Receive as many messages as there are free slots; back off while the queue is empty."""
        delay = self.config.poll_min_seconds
        try:
            while not self.stopping.is_set():
                self._slot_freed.clear()  # before counting: a slot freed after is not missed
                free = self._free_count()
                if free == 0:
                    self._slot_freed.wait()
                    continue
                try:
                    took, more = self._receive_once(free)
                except AzureError as exc:
                    log.warning("receiver: storage error: %s", exc)
                    took, more = 0, False
                except Exception:  # noqa: BLE001 - one bad receive must never end the loop
                    log.exception("receiver: unexpected error")
                    took, more = 0, False
                if took:
                    delay = self.config.poll_min_seconds
                    if more:
                        continue  # a full page: more may be waiting for the other free slots
                self.stopping.wait(delay)  # after a short page the queue had no more: pause too
                if not took:
                    delay = min(delay * 2, self.config.poll_max_seconds)
        finally:
            for inbox in self._inboxes:
                inbox.put(None)  # each slot ends once its job in hand is done

    def _receive_once(self, free: int) -> tuple[int, bool]:
        """One receive of up to `free` messages; returns how many went to a slot, and whether
        the page was full (the queue may hold more)."""
        cfg = self.config
        wanted = min(free, MAX_RECEIVE)
        pages = self.queue.receive_messages(messages_per_page=wanted, max_messages=wanted,
                                            visibility_timeout=cfg.visibility_timeout_seconds
                                            ).by_page()
        # Only the first page: a second one (the SDK asks again after a short page) would
        # cost a request that an almost empty queue answers with nothing.
        messages = list(next(pages, []))
        took, refused = 0, False
        for message in messages:
            try:
                verdict = self._admit(message, refused)
            except AzureError as exc:  # this message comes back after its timeout
                log.warning("message %s: storage error: %s", message.id, exc)
                continue
            except Exception:  # noqa: BLE001 - the rest of the page still gets its slots
                log.exception("message %s: unexpected error", message.id)
                continue
            refused = refused or verdict == "no-slot"
            took += verdict == "taken"
        return took, len(messages) == wanted

    def _admit(self, message: Any, refused: bool) -> str:
        """Decode one received message and give it a slot: "taken", "no-slot" or "left"."""
        cfg = self.config
        lease = MessageLease(self.queue, message, cfg.visibility_timeout_seconds)
        try:
            item = decode(message.content)
        except MalformedMessage as exc:
            if lease.dequeue_count >= cfg.max_dequeue_count:
                self._poison(message, lease, str(exc))
                return "left"
            # Left alone: it comes back until the dequeue limit moves it to the poison queue.
            log.error("message %s (dequeued %d times) is malformed, left for the poison path: "
                      "%s", message.id, lease.dequeue_count, exc)
            self._count("malformed")
            return "left"
        if self.stopping.is_set():
            lease.release()  # SIGTERM or an eviction arrived while receiving: hand it back
            return "left"
        # After one refusal in this batch the rest is not asked for: the answer would be the same.
        got_slot = not refused and self._claim_slot()
        if not got_slot:
            log.info("the pool gives this VM no slot now; message %s handed back", message.id)
            lease.release()
            self._count("no-slot")
            return "no-slot"
        self.activity.begin()
        with self._free_lock:
            slot = self._free_slots.pop(0)
        self._inboxes[slot].put((item, lease))
        return "taken"

    def _slot_thread(self, slot: int) -> None:
        """Run the jobs handed to this slot, one at a time, until the receiver has ended."""
        inbox = self._inboxes[slot]
        while (job := inbox.get()) is not None:
            item, lease = job
            try:
                self._count(self.worker.handle(item, lease, slot))
            except AzureError as exc:
                log.warning("slot %d: storage error: %s", slot, exc)
            except Exception:  # noqa: BLE001 - one bad job must never end the slot's thread
                log.exception("slot %d: unexpected error", slot)
            finally:
                self.activity.end()
                self._release_slot()
                with self._free_lock:
                    self._free_slots.append(slot)
                self._slot_freed.set()

    def _free_count(self) -> int:
        with self._free_lock:
            return len(self._free_slots)

    def _poison(self, message: Any, lease: MessageLease, reason: str) -> None:
        """Move a message no agent can ever handle to `<queue>-poison`, as the host would."""
        try:
            self.poison.send_message(message.content)
        except ResourceNotFoundError:
            self.poison.create_queue()
            self.poison.send_message(message.content)
        lease.delete()
        log.error("message %s moved to %s after %d dequeues: %s", message.id,
                  self.poison.queue_name, lease.dequeue_count, reason)
        self._count("poisoned")

    # --- pool table and app calls -----------------------------------------------------------

    def _claim_slot(self) -> bool:
        if not self.config.use_pool:
            return True
        try:
            return self.own_row.claim_slot()
        except (RegistryError, AzureError) as exc:
            log.error("cannot take a pool slot: %s", exc)
            return False

    def _release_slot(self) -> None:
        if not self.config.use_pool:
            return
        try:
            self.own_row.release_slot()
        except (RegistryError, AzureError) as exc:
            log.warning("could not release the pool slot: %s", exc)

    def _vm_heartbeat(self, final: bool = False) -> None:
        """A pool member beats its pool row; any other agent its ephemeral worker row."""
        cfg = self.config
        try:
            if cfg.use_pool:
                self.own_row.heartbeat(agent_version=__version__)
            else:
                self.workers.heartbeat(cfg.vm_name, slots=cfg.slots,
                                       busy=self.activity.active, started_at=self.started_at,
                                       agent_version=__version__,
                                       state=STOPPED if final else RUNNING)
        except (RegistryError, AzureError, ValueError) as exc:
            log.warning("heartbeat failed: %s", exc)

    def _request_idle(self, idle: float) -> None:
        try:
            self.api.idle(int(idle))
            log.info("idle for %d s: asked the app to shut this VM down", idle)
        except ApiError as exc:
            log.warning("idle request failed: %s", exc)

    def _reset_busy_slots(self) -> None:
        """A starting agent holds no work, so busy slots left by a crashed run are stale."""
        if not self.config.use_pool:
            return
        try:
            rec = self.registry.get(self.config.vm_name)
            if rec.busy:
                self.registry.transition(self.config.vm_name, rec.state, [rec.state], busy=0)
                log.info("reset %d stale busy slot(s) left by a previous run", rec.busy)
        except InvalidTransition:
            pass
        except (RegistryError, AzureError) as exc:
            log.warning("could not read this VM's pool row: %s", exc)

    def _clean_work_dir(self) -> None:
        for path in self.config.work_dir.glob(f"{JOB_DIR_PREFIX}*"):
            shutil.rmtree(path, ignore_errors=True)

    def _count(self, outcome: str) -> None:
        with self._outcome_lock:
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
