"""Durable entities: operations run one batch at a time per entity, state kept in storage.

An entity `@name@key` has a state document (`state/@name@key.json` in the hub's container,
beside the orchestration documents, without an instances row) and takes operations from
the inbox table: signals from clients and orchestrations, and calls from orchestrations,
whose answers go back to the calling orchestration as an `EventRaised` named by the request
id (the protocol the SDK's `call_entity` waits for). The ids of the last requests applied,
with their answers, are kept in the state document, so a request delivered twice (after a
restart) is answered again but applied once.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import azure.functions as func

from devhost.durable.errors import InvalidRequestError, UnknownFunctionError
from devhost.durable.history import check_name, iso, utcnow
from devhost.durable.store import DurableStore

log = logging.getLogger("devhost.durable")
_RECENT = 200

Respond = Callable[[dict[str, Any], dict[str, Any]], Awaitable[None]]


def entity_id(name: str, key: str) -> str:
    """The scheduler id the SDK uses: `@{name lowercased}@{key}`."""
    check_name(name, "entity name")
    check_name(key, "entity key")
    if "@" in name:
        raise InvalidRequestError(f"entity name {name!r} must not contain @")
    return f"@{name.lower()}@{key}"


def split_id(scheduler_id: str) -> tuple[str, str]:
    name, _, key = scheduler_id[1:].partition("@")
    return name, key


@dataclass
class _Entity:
    doc: dict[str, Any]
    pending: list[dict[str, Any]] = field(default_factory=list)
    runner: asyncio.Task | None = None


class EntityHost:
    """Runs the app's entity functions; `respond` hands a call's answer to its caller."""

    def __init__(self, functions: dict[str, Callable[[Any], str]], store: DurableStore,
                 loop: asyncio.AbstractEventLoop, respond: Respond) -> None:
        self._functions = {name.lower(): fn for name, fn in functions.items()}
        self._store = store
        self._loop = loop
        self._respond = respond
        self._entities: dict[str, _Entity] = {}
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._running = False

    def knows(self, name: str) -> bool:
        return name.lower() in self._functions

    async def start(self, pool: concurrent.futures.ThreadPoolExecutor,
                    messages: list[tuple[str, str, dict[str, Any]]]) -> None:
        """Begin, with the stored inbox messages addressed to entities."""
        self._pool = pool
        stored: dict[str, list[dict[str, Any]]] = {}
        for target, msg_id, message in messages:
            stored.setdefault(target, []).append(dict(message, _msg=msg_id))
        for target, items in stored.items():
            entity = await self._get(target)
            entity.pending[:0] = items  # older than anything sent since the start began
        self._running = True
        for entity in list(self._entities.values()):
            self._kick(entity)

    async def stop(self) -> None:
        self._running = False
        runners = [e.runner for e in self._entities.values() if e.runner is not None]
        await asyncio.gather(*runners, return_exceptions=True)
        self._entities.clear()

    async def send(self, target: str, operation: dict[str, Any]) -> None:
        """Store an operation for an entity and wake it (signal or call)."""
        msg_id = await self._store.post(target, operation)
        entity = await self._get(target)
        entity.pending.append(dict(operation, _msg=msg_id))
        self._kick(entity)

    async def read(self, target: str) -> tuple[bool, str | None]:
        """(exists, state JSON text) of an entity."""
        entity = self._entities.get(target)
        doc = entity.doc if entity is not None else await self._store.load_doc(target)
        if doc is None or not doc.get("exists"):
            return False, None
        return True, doc.get("state")

    async def _get(self, target: str) -> _Entity:
        entity = self._entities.get(target)
        if entity is None:
            doc = await self._store.load_doc(target) or {
                "instanceId": target, "entity": True, "exists": False, "state": None,
                "recent": [], "lastUpdatedTime": iso(utcnow())}
            entity = self._entities.setdefault(target, _Entity(doc))
        return entity

    def _kick(self, entity: _Entity) -> None:
        if self._running and entity.pending and (entity.runner is None or entity.runner.done()):
            entity.runner = self._loop.create_task(self._run(entity))

    async def _run(self, entity: _Entity) -> None:
        while entity.pending and self._running:
            batch, entity.pending = entity.pending, []
            try:
                await self._batch(entity, batch)
            except Exception:  # noqa: BLE001 - keep the entity alive and retry the batch
                log.exception("durable: entity %s: batch failed; retrying",
                              entity.doc["instanceId"])
                entity.pending[:0] = batch
                await asyncio.sleep(1.0)

    async def _batch(self, entity: _Entity, batch: list[dict[str, Any]]) -> None:
        doc = dict(entity.doc)
        recent = {request_id: answer for request_id, answer in doc.get("recent") or []}
        fresh, answers = [], []
        for item in batch:
            if item["id"] in recent:  # delivered twice: answer again, apply once
                answers.append((item, recent[item["id"]]))
            elif all(item["id"] != other["id"] for other in fresh):
                fresh.append(item)
        if fresh:
            results = await self._execute(doc, fresh)
            for item, answer in zip(fresh, results, strict=True):
                recent[item["id"]] = answer
                answers.append((item, answer))
        doc["recent"] = list(recent.items())[-_RECENT:]
        doc["lastUpdatedTime"] = iso(utcnow())
        await self._store.save_doc(doc)
        entity.doc = doc
        await self._store.delete_messages(doc["instanceId"],
                                          [item["_msg"] for item in batch if "_msg" in item])
        for item, answer in answers:
            if not item.get("signal") and item.get("parent"):
                await self._respond(item, answer)

    async def _execute(self, doc: dict[str, Any],
                       ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run one batch through the entity function; one answer per operation."""
        name, key = split_id(doc["instanceId"])
        handle = self._functions.get(name)
        if handle is None:
            error = UnknownFunctionError(f"the entity function '{name}' does not exist")
            return [_error_answer(str(error)) for _ in ops]
        context = json.dumps({
            "self": {"name": name, "key": key}, "exists": bool(doc.get("exists")),
            "state": doc.get("state"),
            "batch": [{"name": op["op"], "input": json.dumps(op.get("input") or "null"),
                       "isSignal": bool(op.get("signal")), "id": op["id"]} for op in ops]})
        try:
            out = json.loads(await self._loop.run_in_executor(
                self._pool, handle, func.OrchestrationContext(context)))
        except Exception as exc:  # noqa: BLE001 - every operation of the batch fails
            return [_error_answer(f"{type(exc).__name__}: {exc}") for _ in ops]
        doc["exists"] = bool(out.get("entityExists"))
        doc["state"] = out.get("entityState") if doc["exists"] else None
        answers = []
        for result in out.get("results") or []:
            answer = {"result": result.get("result")}
            if result.get("isError"):
                answer["exceptionType"] = "Exception"
            answers.append(answer)
        answers += [_error_answer("no result") for _ in range(len(ops) - len(answers))]
        return answers


def _error_answer(message: str) -> dict[str, Any]:
    return {"result": json.dumps(message), "exceptionType": "Exception"}
