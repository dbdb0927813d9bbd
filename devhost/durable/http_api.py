"""The durable client HTTP API under /runtime/webhooks/durabletask/.

One set of routes serves both the calls the Python durable client SDK makes (its `rpcBaseUrl`
points here) and the management URLs `create_check_status_response` hands to callers, with
the status codes of the Durable Functions HTTP API: 202 while running (with `Location` and
`Retry-After`), 200 when finished, 404 for an unknown instance, 410 for an event or command
sent to a finished one, 400 for an unknown orchestrator or malformed input.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from aiohttp import web

from devhost.durable.errors import (
    DurableError,
    InvalidRequestError,
    NoRouteError,
    PayloadTooLargeError,
)
from devhost.durable.history import check_name, parse_time

if TYPE_CHECKING:
    from devhost.durable.engine import DurableEngine

log = logging.getLogger("devhost.durable")

PREFIX = "/runtime/webhooks/durabletask"
INSTANCE_PLACEHOLDER = "INSTANCEID"
_STATUS_NAMES = {name.lower(): name for name in (
    "Running", "Pending", "Suspended", "ContinuedAsNew", "Completed", "Failed", "Canceled",
    "Terminated")}
_TERMINAL = {"Completed", "Failed", "Terminated", "Canceled"}


def client_binding(hub: str, base_url: str, rpc_base_url: str | None = None,
                   system_key: str | None = None) -> dict[str, Any]:
    """The `durableClient` binding value: URLs the SDK and callers use to reach this API.

    As the Durable extension builds it (`HttpApiHandler.GetInstanceCreationLinks`,
    `GetClientResponseLinks`, `GetUniversalQueryStrings`): the public URLs carry
    `taskHub`, `connection` and, when keys are enforced, the extension's system key as
    `code=`; the SDK itself calls `rpcBaseUrl`, the host's loopback-only listener
    (`LocalHttpListener.cs`, `http://127.0.0.1:17071/durabletask/` on the real host).
    """
    webhooks = f"{base_url.rstrip('/')}{PREFIX}"
    query = required_query(hub, system_key)
    return {
        "taskHubName": hub,
        "creationUrls": {
            "createNewInstancePostUri":
                f"{webhooks}/orchestrators/{{functionName}}[/{{instanceId}}]?{query}",
            "createAndWaitOnNewInstancePostUri":
                f"{webhooks}/orchestrators/{{functionName}}[/{{instanceId}}]"
                f"?timeout={{timeoutInSeconds}}&pollingInterval={{intervalInSeconds}}&{query}",
        },
        "managementUrls": management_urls(webhooks, INSTANCE_PLACEHOLDER, query),
        "baseUrl": webhooks,
        "requiredQueryStringParameters": query,
        "rpcBaseUrl": rpc_base_url or f"{webhooks}/",
        "httpBaseUrl": "",
        "maxGrpcMessageSizeInBytes": 0,
        "grpcHttpClientTimeout": "00:01:40",
    }


def required_query(hub: str, system_key: str | None) -> str:
    """`taskHub=..&connection=Storage[&code=KEY]`, the query every management URL carries."""
    query = f"taskHub={quote(hub, safe='')}&connection=Storage"
    return f"{query}&code={quote(system_key, safe='')}" if system_key else query


def management_urls(webhooks: str, instance_id: str, query: str) -> dict[str, str]:
    instance = f"{webhooks}/instances/{instance_id}"
    return {
        "id": instance_id,
        "statusQueryGetUri": f"{instance}?{query}",
        "sendEventPostUri": f"{instance}/raiseEvent/{{eventName}}?{query}",
        "terminatePostUri": f"{instance}/terminate?reason={{text}}&{query}",
        "rewindPostUri": f"{instance}/rewind?reason={{text}}&{query}",
        "purgeHistoryDeleteUri": f"{instance}?{query}",
        "restartPostUri": f"{instance}/restart?{query}",
        "suspendPostUri": f"{instance}/suspend?reason={{text}}&{query}",
        "resumePostUri": f"{instance}/resume?reason={{text}}&{query}",
    }


def _error(status: int, message: str, kind: str) -> web.Response:
    return web.json_response({"Message": message, "ExceptionMessage": message,
                              "ExceptionType": kind}, status=status)


def _flag(request: web.Request, name: str, default: bool) -> bool:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    raise InvalidRequestError(f"query parameter {name} must be true or false, got {raw!r}")


class DurableHttpApi:
    """Routes one request to the engine and shapes the answer like the real host."""

    max_body_bytes = 4 * 1024 * 1024

    def __init__(self, engine: DurableEngine, base_url: str, rpc_base_url: str | None = None,
                 system_key: str | None = None) -> None:
        self.engine = engine
        self.base_url = base_url.rstrip("/")
        self.rpc_base_url = rpc_base_url
        self.system_key = system_key

    def client_binding_json(self) -> str:
        """The value of a `durableClient` binding, as the Durable extension builds it."""
        return json.dumps(client_binding(self.engine.hub_name, self.base_url,
                                         self.rpc_base_url, self.system_key))

    async def handle(self, request: web.Request, base_path: str = PREFIX) -> web.Response:
        """Serve one request under `base_path` (the public webhook path, or the RPC one)."""
        try:
            return await self._route(request, base_path)
        except DurableError as exc:
            if exc.status in (404, 410):
                # HttpApiHandler answers unknown routes and instances (404) and finished
                # ones (410) with `request.CreateResponse(status)`: no body.
                log.info("durable: %s %s: %s", request.method, request.path, exc)
                return web.Response(status=exc.status)
            return _error(exc.status, str(exc), type(exc).__name__)
        except Exception:  # noqa: BLE001 - the caller gets a 500 and the log the details
            log.exception("durable: %s %s failed", request.method, request.path)
            return _error(500, "internal error in the durable engine", "InternalServerError")

    # --- routing ----------------------------------------------------------------------------

    async def _route(self, request: web.Request, base_path: str) -> web.Response:
        raw = request.rel_url.raw_path
        base_path = base_path.rstrip("/")
        if not raw.lower().startswith(base_path.lower()):
            raise InvalidRequestError(f"{request.path} is not a durable task path")
        rest = raw[len(base_path):].strip("/")
        parts = [unquote(part) for part in rest.split("/")] if rest else []
        hub = request.query.get("taskHub")
        if hub and hub.lower() != self.engine.hub_name.lower():
            raise InvalidRequestError(
                f"task hub {hub!r} is not served here; this host runs {self.engine.hub_name!r}")
        if parts[:1] == ["orchestrators"] and len(parts) in (2, 3):
            self._allow(request.method, "POST")
            return await self._start(request, parts[1], parts[2] if len(parts) == 3 else None)
        if parts[:1] == ["entities"] and len(parts) == 3:
            return await self._entity(request, parts[1], parts[2])
        if parts[:1] == ["instances"]:
            return await self._instance_route(request, parts)
        raise NoRouteError(f"no durable task route for {request.path}")

    async def _instance_route(self, request: web.Request, parts: list[str]) -> web.Response:
        """`instances/`, `instances/{id}`, `instances/{id}/{op}`, `.../raiseEvent/{name}`."""
        method = request.method
        if len(parts) == 1:
            if method == "GET":
                return await self._list(request)
            self._allow(method, "DELETE")
            return await self._purge_many(request)
        instance_id = check_name(parts[1], "instance id")
        if len(parts) == 2:
            if method == "GET":
                return await self._status(request, instance_id)
            self._allow(method, "DELETE")
            purged = await self.engine.purge(instance_id)
            if not purged:
                raise NoRouteError(f"no instance with id {instance_id!r}")
            return web.json_response({"instancesDeleted": purged})
        if len(parts) == 4 and parts[2] == "raiseEvent":
            self._allow(method, "POST")
            check_name(parts[3], "event name")
            if request.content_type.lower() != "application/json":
                # HttpApiHandler.HandleRaiseEventRequestAsync
                raise InvalidRequestError("Only application/json request content is supported")
            data = await self._input(request)
            await self.engine.raise_event(instance_id, parts[3], data)
            return web.Response(status=202)
        if len(parts) == 3:
            self._allow(method, "POST")
            return await self._command(request, instance_id, parts[2])
        raise NoRouteError(f"no durable task route for {request.path}")

    @staticmethod
    def _allow(method: str, expected: str) -> None:
        if method != expected:
            raise NoRouteError(f"{method} is not served here; use {expected}")

    # --- handlers ---------------------------------------------------------------------------

    async def _start(self, request: web.Request, name: str,
                     instance_id: str | None) -> web.Response:
        check_name(name, "orchestrator name")
        data = await self._input(request)
        version = request.query.get("version")
        new_id = await self.engine.start_new(name, instance_id, data, version)
        timeout = request.query.get("timeout")
        if timeout is not None:
            done = await self._wait(new_id, _seconds(timeout, "timeout"),
                                    _seconds(request.query.get("pollingInterval", "1"),
                                             "pollingInterval"))
            if done is not None and done["runtimeStatus"] == "Completed":
                return web.json_response(done["output"], status=200)
            if done is not None:
                return web.json_response(done, status=200)
        return self._check_status(request, new_id)

    async def _entity(self, request: web.Request, name: str, key: str) -> web.Response:
        if request.method == "GET":
            state = await self.engine.read_entity(name, key)
            return web.Response(status=200, text=state or "null",
                                content_type="application/json")
        self._allow(request.method, "POST")
        operation = request.query.get("op")
        if not operation:
            raise InvalidRequestError("signalling an entity needs the op query parameter")
        await self.engine.signal_entity(name, key, operation, await self._input(request))
        return web.Response(status=202)

    async def _wait(self, instance_id: str, timeout: float,
                    interval: float) -> dict[str, Any] | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            status = await self.engine.status(instance_id)
            if status["runtimeStatus"] in _TERMINAL:
                return status
            if loop.time() >= deadline:
                return None
            await asyncio.sleep(max(0.05, min(interval, deadline - loop.time())))

    async def _status(self, request: web.Request, instance_id: str) -> web.Response:
        status = await self.engine.status(
            instance_id, show_input=_flag(request, "showInput", True),
            show_history=_flag(request, "showHistory", False),
            show_history_output=_flag(request, "showHistoryOutput", False))
        if status["runtimeStatus"] in _TERMINAL:
            return web.json_response(status, status=200)
        # HttpApiHandler.HandleGetStatusRequestAsync: Location is the URL asked, Retry-After 5.
        return web.json_response(status, status=202,
                                 headers={"Location": str(request.url), "Retry-After": "5"})

    async def _list(self, request: web.Request) -> web.Response:
        filters = self._filters(request)
        prefix = request.query.get("instanceIdPrefix") or None
        out = await self.engine.list_status(
            **filters, prefix=prefix, show_input=_flag(request, "showInput", False))
        return web.json_response(out)

    async def _purge_many(self, request: web.Request) -> web.Response:
        filters = self._filters(request)
        if filters["created_from"] is None:
            raise InvalidRequestError("purging by filter needs createdTimeFrom")
        count = await self.engine.purge_many(**filters)
        if not count:
            raise NoRouteError("no finished instance matches the filter")
        return web.json_response({"instancesDeleted": count})

    async def _command(self, request: web.Request, instance_id: str,
                       op: str) -> web.Response:
        reason = request.query.get("reason", "")
        if op == "terminate":
            await self.engine.terminate(instance_id, reason)
        elif op == "suspend":
            await self.engine.suspend(instance_id, reason)
        elif op == "resume":
            await self.engine.resume(instance_id, reason)
        elif op == "restart":
            new_id = _flag(request, "restartWithNewInstanceId", True)
            restarted = await self.engine.restart(instance_id, new_id)
            # HandleRestartInstanceRequestAsync answers CreateCheckStatusResponse(newId).
            return self._check_status(request, restarted)
        elif op == "rewind":
            await self.engine.rewind(instance_id)
        else:
            raise NoRouteError(f"unknown instance operation {op!r}")
        return web.Response(status=202)

    # --- helpers ----------------------------------------------------------------------------

    def _check_status(self, request: web.Request, instance_id: str) -> web.Response:
        """202 with the management links, `Location` and `Retry-After: 10`
        (HttpApiHandler.CreateCheckStatusResponseMessage)."""
        payload = self._links(request, instance_id)
        body = {key: payload[key] for key in (
            "id", "statusQueryGetUri", "sendEventPostUri", "terminatePostUri",
            "purgeHistoryDeleteUri", "restartPostUri", "suspendPostUri", "resumePostUri")}
        return web.json_response(body, status=202, headers={
            "Location": payload["statusQueryGetUri"], "Retry-After": "10"})

    def _links(self, request: web.Request, instance_id: str) -> dict[str, str]:
        """Management URLs for an instance, on the public webhook path with its query."""
        webhooks = f"{self.base_url}{PREFIX}"
        query = required_query(self.engine.hub_name, self.system_key)
        return management_urls(webhooks, quote(instance_id, safe=""), query) | {
            "id": instance_id}

    async def _input(self, request: web.Request) -> str | None:
        """The request body as the JSON text of an input or event payload.

        The SDK sends its payload already serialized to JSON text and then JSON-encodes that
        text once more; a body holding a JSON string that is itself JSON is unwrapped once.
        """
        too_big = PayloadTooLargeError(f"request body over {self.max_body_bytes} bytes")
        if (request.content_length or 0) > self.max_body_bytes:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > self.max_body_bytes:
                raise too_big
            chunks.append(chunk)
        body = b"".join(chunks)
        if not body.strip():
            return None
        try:
            value = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            # HttpApiHandler: JsonReaderException -> 400 "Invalid JSON content".
            raise InvalidRequestError("the request body is not valid JSON") from None
        if value is None:
            return None
        if isinstance(value, str):
            try:
                json.loads(value)
            except (ValueError, RecursionError):
                return json.dumps(value)
            return value
        return json.dumps(value)

    @staticmethod
    def _filters(request: web.Request) -> dict[str, Any]:
        statuses = None
        raw = request.query.get("runtimeStatus")
        if raw:
            statuses = set()
            for part in raw.split(","):
                name = _STATUS_NAMES.get(part.strip().lower())
                if name is None:
                    raise InvalidRequestError(f"unknown runtimeStatus {part.strip()!r}")
                statuses.add(name)
        created_from = request.query.get("createdTimeFrom")
        created_to = request.query.get("createdTimeTo")
        return {"statuses": statuses,
                "created_from": parse_time(created_from) if created_from else None,
                "created_to": parse_time(created_to) if created_to else None}


def _seconds(raw: str, name: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequestError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not 0 <= value <= 3600:
        raise InvalidRequestError(f"{name} must be between 0 and 3600 seconds")
    return value
