"""The durable engine: runs orchestrations by history replay, activities, timers and events.

Each running instance has an in-memory inbox of new events (activity results, timer firings,
external events, sub-orchestration outcomes, commands). A per-instance runner takes the whole
inbox at once - after waiting briefly while activities are still completing, so that a
fan-out's results arrive in a few replays instead of one replay each - appends it to the
history, replays the orchestrator over the history, schedules the new actions and saves the
result (see store.py) before any new work starts. A restart rebuilds everything from storage:
work that was scheduled but whose result was not yet saved runs again (at-least-once), work
whose result was saved never does.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import devhost.durable.history as h
from devhost.durable import planner
from devhost.durable.entities import EntityHost, entity_id
from devhost.durable.errors import (
    DurableError,
    EngineStoppingError,
    InstanceConflictError,
    InstanceGoneError,
    InstanceNotFoundError,
    NotSupportedError,
    UnknownFunctionError,
)
from devhost.durable.functions import discover_default_version, run_activity, run_orchestrator
from devhost.durable.history import EventType, event, iso, parse_time, utcnow
from devhost.durable.store import DurableStore
from devhost.durable.views import (
    TERMINAL,
    history_view,
    json_value,
    row_matches,
    status_of,
    status_time,
)

log = logging.getLogger("devhost.durable")


@dataclass
class _Live:
    """A non-terminal instance held in memory: its state document and unprocessed inbox."""

    doc: dict[str, Any]
    # Items: {"kind": "start" | "history" | "terminate" | "suspend" | "resume", ...}; those
    # read from the stored inbox carry their message id under "_msg".
    pending: list[dict[str, Any]] = field(default_factory=list)
    runner: asyncio.Task | None = None
    timers: dict[int, asyncio.TimerHandle] = field(default_factory=dict)
    inflight: int = 0  # activities running now
    children: int = 0  # sub-orchestrations started and not yet reported back
    # Entity operations leave in the order the orchestration sent them.
    entity_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # A new instance's creation, settled when its first episode is saved (or cannot be).
    created: asyncio.Future | None = None

    @property
    def instance_id(self) -> str:
        return self.doc["instanceId"]

    @property
    def execution_id(self) -> str:
        return self.doc["executionId"]


class DurableEngine:
    """Durable Functions for devhost; see the module docstring and docs/devhost-durable.md."""

    #: Longest wait for more completions before a replay, and the quiet gap that ends it.
    batch_max_seconds = 0.25
    batch_quiet_seconds = 0.02
    #: Activities running at once (async ones on the loop, sync ones also bounded by executor).
    max_concurrent_activities = 200

    def __init__(self, *, functions: Iterable[Any], connection_string: str, hub_name: str,
                 loop: asyncio.AbstractEventLoop,
                 executor: concurrent.futures.ThreadPoolExecutor,
                 default_version: str | None = None) -> None:
        functions = list(functions)
        self._loop = loop
        self._executor = executor
        self._store = DurableStore(connection_string, hub_name)
        self.hub_name = self._store.hub
        self.default_version = (default_version if default_version is not None
                                else discover_default_version(functions)) or ""
        # Function names match case-insensitively, as the extension's `FunctionName` does
        # (FunctionName.cs: OrdinalIgnoreCase): keys are lower-cased names.
        self._orchestrators: dict[str, Callable[[Any], str]] = {}
        self._activities: dict[str, tuple[Callable[..., Any], str]] = {}
        entity_functions: dict[str, Callable[[Any], str]] = {}
        for function in functions:
            trigger = function.get_trigger()
            kind = getattr(trigger, "type", None)
            if kind == "orchestrationTrigger":
                self._orchestrators[function.get_function_name().lower()] = (
                    function.get_user_function())
            elif kind == "activityTrigger":
                self._activities[function.get_function_name().lower()] = (
                    function.get_user_function(), trigger.name)
            elif kind == "entityTrigger":
                entity_functions[function.get_function_name()] = function.get_user_function()
        self._entities = EntityHost(entity_functions, self._store, loop, self._entity_answer)
        self._live: dict[str, _Live] = {}
        self._creating: set[str] = set()
        # Every instance id with a row in the hub: this engine is its only writer (one process
        # per hub), so what it has not seen does not exist, and asking costs no read.
        self._known: set[str] = set()
        self._replayer: concurrent.futures.ThreadPoolExecutor | None = None
        self._activity_slots: asyncio.Semaphore | None = None
        self._activity_tasks: set[asyncio.Task] = set()
        self._tasks: set[asyncio.Task] = set()
        self._running = False
        #: Counters for benchmarks and logs: replays run and seconds spent in them.
        self.stats = {"replays": 0, "replay_seconds": 0.0, "replay_cpu_seconds": 0.0}

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Open storage and resume every unfinished instance from it."""
        await self._store.open()
        self._replayer = concurrent.futures.ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="durable-replay")
        self._activity_slots = asyncio.Semaphore(self.max_concurrent_activities)
        self._running = True
        messages = await self._store.messages()
        await self._recover([m for m in messages if m[0][:1] != "@"])
        await self._entities.start(self._replayer, [m for m in messages if m[0][:1] == "@"])

    async def stop(self) -> None:
        """Stop taking work; unfinished instances resume from storage on the next start."""
        self._running = False
        for live in list(self._live.values()):
            for handle in live.timers.values():
                handle.cancel()
            live.timers.clear()
        # Running activities are abandoned (their results are not recorded, so they run again
        # after a restart); instance creation and processing in progress finish first.
        for task in list(self._activity_tasks):
            task.cancel()
        runners = [live.runner for live in self._live.values() if live.runner is not None]
        await asyncio.gather(*runners, *self._tasks, *self._activity_tasks,
                             return_exceptions=True)
        await self._entities.stop()
        self._live.clear()
        if self._replayer is not None:
            self._replayer.shutdown(wait=True)
            self._replayer = None
        await self._store.close()

    # --- operations behind the client API ---------------------------------------------------

    async def start_new(self, name: str, instance_id: str | None, input_text: str | None,
                        version: str | None = None) -> str:
        """Create an instance and start it; the id may repeat only a finished instance's."""
        return await self._create_instance(name, instance_id, input_text, version, None)

    async def raise_event(self, instance_id: str, name: str, input_text: str | None) -> None:
        h.check_name(name, "event name")
        await self._command(instance_id, {
            "kind": "history",
            "event": event(EventType.EVENT_RAISED, Name=name, Input=input_text)})

    async def terminate(self, instance_id: str, reason: str) -> None:
        await self._command(instance_id, {"kind": "terminate", "reason": reason})

    async def suspend(self, instance_id: str, reason: str) -> None:
        await self._command(instance_id, {"kind": "suspend", "reason": reason})

    async def resume(self, instance_id: str, reason: str) -> None:
        await self._command(instance_id, {"kind": "resume", "reason": reason})

    async def restart(self, instance_id: str, new_instance_id: bool) -> str:
        """Start the same orchestrator again with the instance's original input."""
        doc = await self._load(instance_id)
        if doc["status"] not in TERMINAL:
            raise InstanceConflictError(
                f"instance {instance_id!r} is {doc['status']}; only finished instances restart")
        target = uuid.uuid4().hex if new_instance_id else instance_id
        return await self._create_instance(doc["name"], target, doc.get("firstInput"),
                                           doc.get("version"), None)

    async def signal_entity(self, name: str, key: str, operation: str,
                            input_text: str | None) -> None:
        """Queue a signal (one-way operation) for an entity."""
        target = entity_id(name, key)
        if not self._entities.knows(name):
            raise UnknownFunctionError(f"the entity function '{name}' does not exist")
        h.check_name(operation, "operation name")
        await self._entities.send(target, {"id": uuid.uuid4().hex, "op": operation,
                                           "signal": True, "input": input_text})

    async def read_entity(self, name: str, key: str) -> str | None:
        """An entity's state as JSON text; InstanceNotFoundError if it has none."""
        exists, state = await self._entities.read(entity_id(name, key))
        if not exists:
            raise InstanceNotFoundError(f"entity {name}/{key} has no state")
        return state

    async def _send_entity(self, live: _Live, target: str, request: dict[str, Any]) -> None:
        async with live.entity_lock:
            await self._entities.send(target, request)

    async def _entity_answer(self, request: dict[str, Any], answer: dict[str, Any]) -> None:
        """Deliver an entity call's answer to the orchestration that made the call."""
        await self._post(request["parent"], {
            "kind": "history", "exec": request.get("parentExec"),
            "event": event(EventType.EVENT_RAISED, Name=request["id"],
                           Input=json.dumps(answer))})

    async def rewind(self, instance_id: str) -> None:
        """Rewinding failed instances is not implemented; the checks still apply."""
        doc = await self._load(instance_id)
        if doc["status"] != "Failed":
            raise InstanceGoneError(
                f"instance {instance_id!r} is {doc['status']}; only failed instances rewind")
        raise NotSupportedError("rewind is not supported by devhost")

    async def status(self, instance_id: str, *, show_input: bool = True,
                     show_history: bool = False, show_history_output: bool = False
                     ) -> dict[str, Any]:
        """The status JSON the Durable HTTP API returns for one instance."""
        h.check_name(instance_id, "instance id")
        live = self._live.get(instance_id)
        if live is None and instance_id not in self._known:
            raise InstanceNotFoundError(f"no instance with id {instance_id!r}")
        if live is None and not show_history:
            row = await self._store.get_row(instance_id)
            if row is None:
                raise InstanceNotFoundError(f"no instance with id {instance_id!r}")
            return await self._row_status(row, show_input)
        doc = live.doc if live is not None else await self._store.load_doc(instance_id)
        if doc is None:
            raise InstanceNotFoundError(f"no instance with id {instance_id!r}")
        out = status_of(doc, show_input)
        if show_history:
            out["historyEvents"] = history_view(doc, show_history_output, show_input)
        return out

    async def list_status(self, *, statuses: set[str] | None = None,
                          created_from: datetime | None = None,
                          created_to: datetime | None = None, prefix: str | None = None,
                          show_input: bool = False) -> list[dict[str, Any]]:
        """Status of every instance matching all the given filters, oldest first."""
        rows = [row for row in await self._store.list_rows()
                if row_matches(row, statuses, created_from, created_to, prefix)]
        rows.sort(key=lambda row: row["CreatedTime"])
        out = []
        for row in rows:
            live = self._live.get(row["PartitionKey"])
            out.append(status_of(live.doc, show_input) if live is not None
                       else await self._row_status(row, show_input))
        return out

    async def _row_status(self, row: dict[str, Any], show_input: bool) -> dict[str, Any]:
        """Status JSON from an instance row (no history download unless a value is big)."""
        value = self._store.row_value
        return {
            "name": row["Name"], "instanceId": row["PartitionKey"],
            "runtimeStatus": row["RuntimeStatus"],
            "input": json_value(await value(row, "Input")) if show_input else None,
            "customStatus": json_value(await value(row, "CustomStatus")),
            "output": json_value(await value(row, "Output")),
            "createdTime": status_time(row["CreatedTime"]),
            "lastUpdatedTime": status_time(row["LastUpdatedTime"]),
        }

    async def purge(self, instance_id: str) -> int:
        """Delete a finished instance's row, history and inbox; returns how many went."""
        h.check_name(instance_id, "instance id")
        if instance_id in self._live:
            status = self._live[instance_id].doc["status"]
            raise InstanceConflictError(
                f"instance {instance_id!r} is {status}; only finished instances can be purged")
        row = await self._store.get_row(instance_id) if instance_id in self._known else None
        if row is None:
            return 0
        await self._store.purge(instance_id)
        self._known.discard(instance_id)
        return 1

    async def purge_many(self, *, statuses: set[str] | None, created_from: datetime | None,
                         created_to: datetime | None) -> int:
        """Purge every finished instance matching the filters; running ones are kept."""
        count = 0
        for row in await self._store.list_rows():
            if row["RuntimeStatus"] not in TERMINAL or row["PartitionKey"] in self._live:
                continue
            if row_matches(row, statuses, created_from, created_to, None):
                await self._store.purge(row["PartitionKey"])
                self._known.discard(row["PartitionKey"])
                count += 1
        return count

    # --- instance creation and commands -----------------------------------------------------

    async def _create_instance(self, name: str, instance_id: str | None,
                               input_text: str | None, version: str | None,
                               parent: dict[str, Any] | None) -> str:
        if name.lower() not in self._orchestrators:
            raise UnknownFunctionError(
                f"the function '{name}' does not exist, is disabled, or is not an orchestrator"
                " function")
        instance_id = h.check_name(instance_id or uuid.uuid4().hex, "instance id")
        if instance_id in self._live or instance_id in self._creating:
            status = self._live[instance_id].doc["status"] if instance_id in self._live else (
                "Pending")
            raise InstanceConflictError(
                f"an orchestration instance with id {instance_id!r} is already {status}")
        self._creating.add(instance_id)
        try:
            row = await self._store.get_row(instance_id) if instance_id in self._known else None
            if row is not None:
                # A non-finished row without a state document is a creation cut short.
                if row["RuntimeStatus"] not in TERMINAL and (
                        await self._store.doc_of_row(row, instance_id)) is not None:
                    raise InstanceConflictError(
                        f"an orchestration instance with id {instance_id!r} is already"
                        f" {row['RuntimeStatus']}")
                await self._store.purge(instance_id)
                self._known.discard(instance_id)
            now = iso(utcnow())
            doc: dict[str, Any] = {
                "instanceId": instance_id, "name": name,
                "version": self.default_version if version is None else version,
                "executionId": uuid.uuid4().hex, "input": input_text, "firstInput": input_text,
                "parent": parent, "status": "Pending", "output": None, "customStatus": None,
                "createdTime": now, "lastUpdatedTime": now, "history": [], "nextSeq": 0,
                "actionsSeen": 0, "retries": {}, "retryTimers": {}, "timerLeaves": {},
                "cancelledTimers": [], "buffered": [], "applied": [],
            }
            # The first episode runs before anything is stored and its save creates the
            # instance: one write instead of a Pending row rewritten at once. The caller
            # hears back once that save is done, so an accepted start is never lost.
            live = _Live(doc, pending=[{"kind": "start"}], created=self._loop.create_future())
            self._live[instance_id] = live
        finally:
            self._creating.discard(instance_id)
        self._kick(live)
        await asyncio.shield(live.created)
        return instance_id

    async def _load(self, instance_id: str) -> dict[str, Any]:
        h.check_name(instance_id, "instance id")
        live = self._live.get(instance_id)
        if live is not None:
            return live.doc
        if instance_id not in self._known:
            raise InstanceNotFoundError(f"no instance with id {instance_id!r}")
        doc = await self._store.load_doc(instance_id)
        if doc is None:
            raise InstanceNotFoundError(f"no instance with id {instance_id!r}")
        return doc

    async def _command(self, instance_id: str, message: dict[str, Any]) -> None:
        """Store a message for a running instance and wake it; 404/410 if it can't take it.

        An event for an instance held here goes straight into its next episode, and the
        caller hears back once that episode is saved: the history holds it then, so the
        inbox row a message otherwise waits in (a write and a delete) is not needed. Other
        commands, and events for an instance still being created, go through the inbox."""
        doc = await self._load(instance_id)
        live = self._live.get(instance_id)
        if live is None or doc["status"] in TERMINAL:
            raise InstanceGoneError(
                f"instance {instance_id!r} is {doc['status']} and takes no more events")
        if message["kind"] != "history" or (live.created is not None
                                            and not live.created.done()):
            await self._post(instance_id, message)
            return
        if not self._running:
            raise EngineStoppingError("the host is stopping; the event was not recorded")
        saved = self._loop.create_future()
        self._append(live, dict(message, _saved=saved))
        self._kick(live)
        await asyncio.shield(saved)

    async def _post(self, instance_id: str, message: dict[str, Any]) -> None:
        msg_id = await self._store.post(instance_id, message)
        live = self._live.get(instance_id)
        if live is None:
            await self._store.delete_messages(instance_id, [msg_id])
            return
        self._append(live, dict(message, _msg=msg_id))
        self._kick(live)

    @staticmethod
    def _append(live: _Live, item: dict[str, Any]) -> None:
        live.pending.append(item)
        if _is_child_outcome(item):
            live.children = max(0, live.children - 1)

    def _deliver(self, instance_id: str, execution_id: str, ev: dict[str, Any]) -> None:
        """Hand a result produced in this process (activity, timer) to its instance."""
        live = self._live.get(instance_id)
        if not self._running or live is None or live.execution_id != execution_id:
            return
        self._append(live, {"kind": "history", "event": ev, "exec": execution_id})
        self._kick(live)

    # --- the per-instance runner ------------------------------------------------------------

    def _kick(self, live: _Live) -> None:
        if self._running and (live.runner is None or live.runner.done()):
            live.runner = self._loop.create_task(self._run(live))

    async def _run(self, live: _Live) -> None:
        while live.pending and self._running:
            await self._gather(live)
            batch, live.pending = live.pending, []
            saved = live.doc
            try:
                await self._episode(live, batch)
            except Exception as exc:  # noqa: BLE001 - keep the instance alive, retry the batch
                if live.doc is not saved:  # failed after saving: the batch is recorded
                    log.exception("durable: instance %s: follow-up after saving failed",
                                  live.instance_id)
                    continue
                if self._abandon_creation(live, exc):
                    return
                log.exception("durable: instance %s: processing failed; retrying",
                              live.instance_id)
                live.pending[:0] = batch
                await asyncio.sleep(1.0)
        if not self._running:
            self._refuse_waiting(live, EngineStoppingError(
                f"the host stopped before instance {live.instance_id!r} recorded the event"))
        self._abandon_creation(live, EngineStoppingError(
            f"the host stopped before instance {live.instance_id!r} was created"))

    def _abandon_creation(self, live: _Live, exc: BaseException) -> bool:
        """A creation whose first save failed is forgotten (nothing of it was stored) and
        its caller gets the error; False when the instance exists already."""
        if live.created is None or live.created.done():
            return False
        live.created.set_exception(exc)
        if self._live.get(live.instance_id) is live:
            del self._live[live.instance_id]
        self._cancel_all_timers(live)
        return True

    async def _gather(self, live: _Live) -> None:
        """Wait a moment for more completions while activities or children still run."""
        deadline = self._loop.time() + self.batch_max_seconds
        while live.inflight + live.children > 0 and self._loop.time() < deadline:
            count = len(live.pending)
            await asyncio.sleep(self.batch_quiet_seconds)
            if len(live.pending) == count:
                break

    async def _episode(self, live: _Live, batch: list[dict[str, Any]]) -> None:
        """Apply one batch: record it, replay the orchestrator, save, then start new work."""
        doc = planner.fork(live.doc)
        now = utcnow()
        msg_ids = [item["_msg"] for item in batch if "_msg" in item]
        new_events, terminate = planner.take_batch(doc, batch, now)
        work: list[planner.Work] = []
        if terminate is not None:
            doc["status"] = "Terminated"
            doc["output"] = json.dumps(terminate)
            doc["history"].append(event(EventType.EXECUTION_TERMINATED, timestamp=now,
                                        Input=doc["output"]))
        elif doc["status"] == "Suspended":
            doc["buffered"].extend(new_events)
        else:
            new_events = doc["buffered"] + new_events
            doc["buffered"] = []
            if new_events:
                work = await self._replay(doc, new_events, now)
        await self._commit(live, doc, msg_ids, work)
        for item in batch:  # events whose callers wait for this save
            if "_saved" in item and not item["_saved"].done():
                item["_saved"].set_result(None)

    async def _replay(self, doc: dict[str, Any], new_events: list[dict[str, Any]],
                      now: datetime) -> list[planner.Work]:
        """Replay the orchestrator over its history plus the new events (in a thread)."""
        ordinary, tail = planner.split_batch(doc, new_events)
        fresh = [event(EventType.ORCHESTRATOR_STARTED, timestamp=now), *ordinary, *tail]
        context = planner.build_context(doc, fresh)
        started = self._loop.time()
        (state, error), cpu = await self._loop.run_in_executor(
            self._replayer, _cpu_timed, run_orchestrator,
            self._orchestrators.get(doc["name"].lower()), doc["name"], context)
        self.stats["replays"] += 1
        self.stats["replay_seconds"] += self._loop.time() - started
        self.stats["replay_cpu_seconds"] += cpu
        doc["history"].extend(fresh)
        return planner.apply_state(doc, state, error, tail, now)

    async def _commit(self, live: _Live, doc: dict[str, Any], msg_ids: list[str],
                      work: list[planner.Work]) -> None:
        """Save the state document and row, drop applied messages, then start new work."""
        await self._store.save(doc)
        self._known.add(doc["instanceId"])
        live.doc = doc
        if live.created is not None and not live.created.done():
            live.created.set_result(None)
        if msg_ids:
            await self._store.delete_messages(doc["instanceId"], msg_ids)
        if doc["status"] in TERMINAL:
            await self._finish(live)
            return
        for item in work:
            self._start_work(live, item)
        if doc["status"] == "ContinuedAsNew":
            await self._begin_next_execution(live)

    def _start_work(self, live: _Live, item: planner.Work) -> None:
        doc = live.doc
        if item.kind == "activity":
            self._start_activity(live, doc["executionId"], item.seq, item.name, item.input)
        elif item.kind == "timer":
            self._start_timer(live, doc["executionId"], item.seq, item.fire_at)
        elif item.kind == "child":
            parent = {"instanceId": doc["instanceId"], "executionId": doc["executionId"],
                      "taskId": item.seq, "name": doc["name"]}
            live.children += 1
            self._spawn(self._start_child(parent, item.name, item.instance_id, item.input,
                                          item.version))
        elif item.kind == "entity":
            self._spawn(self._send_entity(live, item.instance_id, json.loads(item.input)))
        elif item.kind == "cancel" and item.seq >= 0:
            self._cancel_timer(live, item.seq)
        elif item.kind == "cancel":
            self._cancel_all_timers(live)

    async def _begin_next_execution(self, live: _Live) -> None:
        old = live.doc
        doc = dict(old)
        doc.update({
            "executionId": uuid.uuid4().hex, "input": old.get("continueWith"), "history": [],
            "nextSeq": 0, "actionsSeen": 0, "retries": {}, "retryTimers": {},
            "timerLeaves": {}, "cancelledTimers": [], "status": "Running",
            "continueWith": None,
        })
        await self._store.save(doc)
        live.doc = doc
        live.pending.insert(0, {"kind": "start"})

    async def _finish(self, live: _Live) -> None:
        """A finished instance leaves memory; its parent (if any) learns the outcome."""
        doc = live.doc
        log.info("durable: %s '%s' %s", doc["instanceId"], doc["name"], doc["status"])
        self._cancel_all_timers(live)
        if self._live.get(live.instance_id) is live:
            del self._live[live.instance_id]
        self._refuse_waiting(live, InstanceGoneError(
            f"instance {live.instance_id!r} is {doc['status']} and takes no more events"))
        await self._notify_parent(live.doc)

    @staticmethod
    def _refuse_waiting(live: _Live, exc: Exception) -> None:
        """Events not yet in a saved episode of an instance that takes no more: their callers
        get `exc` (nothing of them was kept)."""
        waiting = [item for item in live.pending if "_saved" in item]
        live.pending = [item for item in live.pending if "_saved" not in item]
        for item in waiting:
            if not item["_saved"].done():
                item["_saved"].set_exception(exc)

    async def _notify_parent(self, doc: dict[str, Any]) -> None:
        parent = doc.get("parent")
        if not parent:
            return
        await self._post(parent["instanceId"], {
            "kind": "history", "exec": parent["executionId"],
            "event": _outcome_event(doc, parent["taskId"])})

    # --- work: activities, timers, sub-orchestrations ---------------------------------------

    def _spawn(self, coro: Any, tasks: set[asyncio.Task] | None = None) -> None:
        tasks = self._tasks if tasks is None else tasks
        task = self._loop.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def _start_activity(self, live: _Live, execution_id: str, seq: int, name: str,
                        input_text: str | None) -> None:
        live.inflight += 1
        self._spawn(self._run_activity(live, execution_id, seq, name, input_text),
                    self._activity_tasks)

    async def _run_activity(self, live: _Live, execution_id: str, seq: int, name: str,
                            input_text: str | None) -> None:
        try:
            assert self._activity_slots is not None
            async with self._activity_slots:
                result = await run_activity(self._activities.get(name.lower()), name, input_text,
                                            self._loop, self._executor)
            ev = (event(EventType.TASK_COMPLETED, TaskScheduledId=seq, Result=result[1])
                  if result[0] else
                  event(EventType.TASK_FAILED, TaskScheduledId=seq, Reason=result[1],
                        Details=result[2]))
            self._deliver(live.instance_id, execution_id, ev)
        finally:
            live.inflight -= 1

    def _start_timer(self, live: _Live, execution_id: str, seq: int, fire_at: str) -> None:
        delay = (parse_time(fire_at) - utcnow()).total_seconds()
        live.timers[seq] = self._loop.call_later(
            max(0.0, delay), self._fire_timer, live, execution_id, seq, fire_at)

    def _fire_timer(self, live: _Live, execution_id: str, seq: int, fire_at: str) -> None:
        live.timers.pop(seq, None)
        self._deliver(live.instance_id, execution_id,
                      event(EventType.TIMER_FIRED, TimerId=seq, FireAt=fire_at))

    def _cancel_timer(self, live: _Live, seq: int) -> None:
        handle = live.timers.pop(seq, None)
        if handle is not None:
            handle.cancel()

    def _cancel_all_timers(self, live: _Live) -> None:
        for handle in live.timers.values():
            handle.cancel()
        live.timers.clear()

    async def _start_child(self, parent: dict[str, Any], name: str, child_id: str,
                           input_text: str | None, version: str | None) -> None:
        try:
            await self._create_instance(name, child_id, input_text, version, parent)
        except DurableError as exc:
            await self._post(parent["instanceId"], {
                "kind": "history", "exec": parent["executionId"],
                "event": event(EventType.SUB_ORCHESTRATION_INSTANCE_FAILED,
                               TaskScheduledId=parent["taskId"],
                               Reason=f"Could not start sub-orchestration '{name}': {exc}",
                               Details="")})

    # --- recovery ---------------------------------------------------------------------------

    async def _recover(self, messages: list[tuple[str, str, dict[str, Any]]]) -> None:
        """Rebuild in-memory state from storage and restart whatever was unfinished."""
        rows = await self._store.list_rows()
        self._known = {row["PartitionKey"] for row in rows}
        for row in rows:
            if row["RuntimeStatus"] in TERMINAL:
                continue
            doc = await self._store.load_doc(row["PartitionKey"])
            if doc is None:
                continue
            if doc["status"] in TERMINAL:  # saved, but the row update was lost
                await self._store.save(doc)
                continue
            self._live[doc["instanceId"]] = _Live(doc)
        for live in list(self._live.values()):
            await self._resume(live)
        for instance_id, msg_id, message in messages:
            live = self._live.get(instance_id)
            if live is None or msg_id in (live.doc.get("applied") or []):
                await self._store.delete_messages(instance_id, [msg_id])
                continue
            self._append(live, dict(message, _msg=msg_id))
        for live in self._live.values():
            if live.pending:
                self._kick(live)

    async def _resume(self, live: _Live) -> None:
        """Restart an instance's outstanding work as its saved history records it."""
        doc = live.doc
        if doc["status"] == "ContinuedAsNew":
            await self._begin_next_execution(live)
            return
        if not doc["history"]:
            live.pending.append({"kind": "start"})
            return
        cancelled = set(doc["cancelledTimers"])
        for ev in h.outstanding(doc["history"]):
            seq = ev["EventId"]
            if ev["EventType"] == EventType.TASK_SCHEDULED:
                self._start_activity(live, doc["executionId"], seq, ev["Name"],
                                     ev.get("Input"))
            elif ev["EventType"] == EventType.TIMER_CREATED and seq not in cancelled:
                self._start_timer(live, doc["executionId"], seq, ev["FireAt"])
            elif ev["EventType"] == EventType.SUB_ORCHESTRATION_INSTANCE_CREATED:
                live.children += 1
                await self._recover_child(live, ev)
        # Entity calls still waiting for an answer are sent again (answered once per id).
        answered = {ev.get("Name") for ev in doc["history"]
                    if ev["EventType"] == EventType.EVENT_RAISED}
        for ev in doc["history"]:
            if ev["EventType"] == EventType.EVENT_SENT:
                request = json.loads(ev["Input"])
                if not request.get("signal") and request["id"] not in answered:
                    self._spawn(self._send_entity(live, ev["InstanceId"], request))

    async def _recover_child(self, live: _Live, created: dict[str, Any]) -> None:
        """Re-link a sub-orchestration: start it, adopt it, or report its saved outcome."""
        doc = live.doc
        parent = {"instanceId": doc["instanceId"], "executionId": doc["executionId"],
                  "taskId": created["EventId"], "name": doc["name"]}
        child_id = created["InstanceId"]
        if child_id in self._live:
            return
        child = await self._store.load_doc(child_id)
        if child is None:
            self._spawn(self._start_child(parent, created["Name"], child_id,
                                          created.get("Input"), created.get("Version")))
        elif child["status"] not in TERMINAL:
            # Created just before the stop, before its row was written: adopt it.
            adopted = _Live(child)
            self._live[child_id] = adopted
            await self._store.save(child)
            self._known.add(child_id)
            await self._resume(adopted)
        elif (child.get("parent") or {}).get("taskId") == created["EventId"]:
            self._deliver(doc["instanceId"], doc["executionId"],
                          _outcome_event(child, created["EventId"]))


def _is_child_outcome(message: dict[str, Any]) -> bool:
    ev = message.get("event") or {}
    return ev.get("EventType") in (EventType.SUB_ORCHESTRATION_INSTANCE_COMPLETED,
                                   EventType.SUB_ORCHESTRATION_INSTANCE_FAILED)


def _outcome_event(child: dict[str, Any], task_id: int) -> dict[str, Any]:
    """The event a parent gets when its sub-orchestration finishes."""
    if child["status"] == "Completed":
        return event(EventType.SUB_ORCHESTRATION_INSTANCE_COMPLETED, TaskScheduledId=task_id,
                     Result=child.get("output"))
    detail = json_value(child.get("output"))
    reason = detail if child["status"] == "Failed" else (
        f"Sub-orchestration '{child['name']}' ({child['instanceId']}) was"
        f" {child['status'].lower()}: {detail}")
    return event(EventType.SUB_ORCHESTRATION_INSTANCE_FAILED, TaskScheduledId=task_id,
                 Reason=str(reason), Details="")


def _cpu_timed(fn: Any, *args: Any) -> tuple[Any, float]:
    """Run `fn` and measure the CPU time its thread spent (the orchestrator's replay cost)."""
    started = time.thread_time()
    result = fn(*args)
    return result, time.thread_time() - started
