"""The HTTP side of the host: function routes, `/admin/*` and `/runtime/webhooks/*`.

Requests become real `func.HttpRequest` objects (the worker's own class); answers are what the
worker's own `HttpResponseConverter` made of the function's output. The host's own refusals
(401, 404 and 500) have no body, as on the real host; devhost-specific refusals (405, 413,
admin API input) are JSON `{"error": {code, message}}`.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import azure.functions as func
from aiohttp import web
from azure.functions.http import HttpRequest as WorkerHttpRequest
from multidict import CIMultiDict

from devhost.errors import DevHostError, InvocationError
from devhost.invoker import HTTP_UNSET, Invoker
from devhost.keys import ADMIN, HostKeys
from devhost.loader import FunctionSpec
from devhost.routes import RouteTable

log = logging.getLogger("devhost")
MAX_BODY_BYTES = 100 * 1024 * 1024
ALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE")


def error_response(status: int, code: str, message: str,
                   headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status,
                             headers=headers)


def bare(status: int) -> web.Response:
    """The host's own 401/404/500: a status and no body."""
    return web.Response(status=status)


def to_web_response(datum: Any) -> web.Response:
    """The HTTP answer for an encoded HTTP output (see `invoker.encode_http_output`), as the
    host renders the worker's `RpcHttp`: status, headers, one `Set-Cookie` per cookie."""
    if datum is HTTP_UNSET:
        return web.Response(status=200)  # an output binding left unset: the host's 200
    if datum.type == "string":
        return web.Response(status=200, text=datum.value, content_type="text/plain")
    value = datum.value
    headers: CIMultiDict[str] = CIMultiDict()
    for name, header in value["headers"].items():
        headers.add(name, header.value)
    for cookie in value.get("cookies") or []:
        for morsel in cookie.values():
            headers.add("Set-Cookie", morsel.OutputString())
    return web.Response(status=int(value["status_code"].value), body=value["body"].value or b"",
                        headers=headers)


async def build_http_request(request: web.Request, route_params: Mapping[str, str],
                             body: bytes) -> func.HttpRequest:
    headers: dict[str, str] = {}
    for key, value in request.headers.items():
        low = key.lower()
        headers[low] = f"{headers[low]}, {value}" if low in headers else value
    params: dict[str, str] = {}
    for key, value in request.query.items():
        params.setdefault(key, value)
    return WorkerHttpRequest(method=request.method, url=str(request.url), headers=headers,
                             params=params, route_params=dict(route_params),
                             body_type="bytes", body=body)


def http_metadata(req: func.HttpRequest) -> dict[str, Any]:
    """Values binding expressions can use in an HTTP-triggered function."""
    metadata: dict[str, Any] = {}
    try:
        body = json.loads(req.get_body() or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError):
        # Too deep to parse is no binding data, as for the host (Json.NET's depth limit):
        # the function still runs and reads its body itself.
        body = None
    if isinstance(body, dict):
        metadata.update(body)
    metadata["Query"] = dict(req.params)
    metadata["Headers"] = dict(req.headers)
    metadata.update(req.route_params)
    return metadata


@dataclass
class HttpFunction:
    spec: FunctionSpec
    auth_level: str
    methods: tuple[str, ...] | None
    route: str


WebHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# What the host answers at `/` (its HomeController's page): a plain "up and running" page.
LANDING_PAGE = ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Azure Functions"
                "</title></head><body><h1>Your Functions 4.0 app is up and running</h1>"
                "</body></html>")


class HttpFront:
    """Dispatches every request path; one instance per host."""

    def __init__(self, specs: list[FunctionSpec], route_prefix: str, keys: HostKeys,
                 invoker: Invoker, admin_invoke: Callable[[FunctionSpec, Any], Awaitable[None]],
                 blobs_webhook: WebHandler, durable_webhook: WebHandler | None,
                 status: Callable[[], dict[str, Any]],
                 function_errors: Mapping[str, list[str]] | None = None,
                 max_body_bytes: int = MAX_BODY_BYTES, cors: str = "",
                 cors_credentials: bool = False,
                 disabled: frozenset[str] = frozenset()) -> None:
        self.max_body_bytes = max_body_bytes
        self.cors_origins = {o.strip().rstrip("/") for o in cors.split(",") if o.strip()}
        self.cors_credentials = cors_credentials
        self.prefix = route_prefix.strip("/")
        self.keys = keys
        self.invoker = invoker
        self.admin_invoke = admin_invoke
        self.blobs_webhook = blobs_webhook
        self.durable_webhook = durable_webhook
        self.status = status
        self.by_name = {s.name.lower(): s for s in specs}
        self.function_errors = {k.lower(): list(v) for k, v in (function_errors or {}).items()}
        self.routes: RouteTable[HttpFunction] = RouteTable()
        self.http_functions: list[HttpFunction] = []
        self.disabled = disabled
        for spec in specs:
            if spec.trigger_type != "httpTrigger" or spec.name in disabled:
                continue  # a disabled HTTP function has no route: 404, as on Azure
            methods = spec.trigger.get("methods") or None
            route = str(spec.trigger.get("route") or spec.name).strip("/")
            entry = HttpFunction(spec, str(spec.trigger.get("authLevel") or "FUNCTION").upper(),
                                 tuple(m.upper() for m in methods) if methods else None, route)
            self.routes.add(route, entry.methods, entry)
            self.http_functions.append(entry)

    def url_of(self, base_url: str, entry: HttpFunction) -> str:
        path = "/".join(p for p in (self.prefix, entry.route) if p)
        return f"{base_url}/{path}"

    def application(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes,
                              middlewares=[self._cors] if self.cors_origins else [])
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        return app

    @web.middleware
    async def _cors(self, request: web.Request, handler: WebHandler) -> web.StreamResponse:
        """local.settings.json `Host.CORS`: allowed origins (or `*`), as `func start` does."""
        origin = request.headers.get("Origin")
        allowed = origin is not None and ("*" in self.cors_origins
                                          or origin.rstrip("/") in self.cors_origins)
        if (request.method == "OPTIONS" and allowed
                and "Access-Control-Request-Method" in request.headers):
            response: web.StreamResponse = web.Response(status=204, headers={
                "Access-Control-Allow-Methods": ", ".join(ALL_METHODS),
                "Access-Control-Allow-Headers": request.headers.get(
                    "Access-Control-Request-Headers", "*"),
                "Access-Control-Max-Age": "600"})
        else:
            response = await handler(request)
        if allowed and origin is not None:
            wildcard = "*" in self.cors_origins and not self.cors_credentials
            response.headers["Access-Control-Allow-Origin"] = "*" if wildcard else origin
            if self.cors_credentials:
                response.headers["Access-Control-Allow-Credentials"] = "true"
            if not wildcard:
                response.headers["Vary"] = "Origin"
        return response

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        # Match on the raw path, so `%2F` inside a value does not split segments; route
        # values are decoded one by one.
        path = request.rel_url.raw_path.strip("/")
        lowered = path.lower()
        try:
            if lowered.startswith("admin/") or lowered == "admin":
                return await self._admin(request, path)
            if lowered == "runtime/webhooks/blobs":
                return await self.blobs_webhook(request)
            if lowered.startswith("runtime/webhooks/durabletask"):
                if self.durable_webhook is None:
                    return bare(404)
                return await self.durable_webhook(request)
            if self.prefix:
                if lowered != self.prefix.lower() and not lowered.startswith(
                        self.prefix.lower() + "/"):
                    if not path:
                        return web.Response(text=LANDING_PAGE, content_type="text/html")
                    return bare(404)
                path = path[len(self.prefix):].strip("/")
            return await self._function(request, path)
        except web.HTTPRequestEntityTooLarge:
            return error_response(413, "PayloadTooLarge",
                                  f"request body exceeds {self.max_body_bytes} bytes")
        except Exception:  # noqa: BLE001 - the host never answers with a stack trace
            log.exception("devhost: %s %s failed", request.method, request.path)
            return bare(500)

    async def _function(self, request: web.Request, path: str) -> web.StreamResponse:
        outcome, entry, values = self.routes.find(path, request.method)
        if outcome == "method":
            # The real host answers 404 here (a route whose methods exclude this one does not
            # match); the app's published API promises 405 with Allow, so devhost keeps that
            # until the app answers it itself (docs/devhost.md, differences).
            allowed = ", ".join(self.routes.allowed_methods(path))
            return error_response(405, "MethodNotAllowed",
                                  f"method {request.method} is not allowed on {request.path}",
                                  headers={"Allow": allowed})
        if entry is None:
            return bare(404)
        key = HostKeys.presented(request.query, request.headers)
        if not self.keys.allows(entry.auth_level, key):
            return bare(401)
        body = await request.read()
        req = await build_http_request(request, values, body)
        try:
            result = await self.invoker.invoke(entry.spec, req, http_metadata(req),
                                               "This function was programmatically called via"
                                               " the host APIs.")
        except InvocationError:
            return bare(500)  # the host's answer to a failed invocation
        try:
            return to_web_response(result.http_response)
        except (TypeError, ValueError) as exc:
            log.error("Functions.%s returned an HTTP response devhost cannot send: %s",
                      entry.spec.name, exc)
            return bare(500)

    async def _admin(self, request: web.Request, path: str) -> web.StreamResponse:
        parts = path.split("/")
        if parts[1:] == ["host", "ping"]:
            return web.Response(status=200)
        key = HostKeys.presented(request.query, request.headers)
        if not self.keys.allows(ADMIN, key):
            return bare(401)
        if parts[1:] == ["host", "status"] and request.method == "GET":
            return web.json_response(self.status())
        if parts[1:] == ["functions"] and request.method == "GET":
            return web.json_response([{"name": s.name, "trigger": s.trigger_type,
                                       "isDisabled": s.name in self.disabled}
                                      for s in self.by_name.values()])
        if (len(parts) == 4 and parts[1] == "functions" and parts[3] == "status"
                and request.method == "GET"):
            return self._function_status(parts[2])
        if len(parts) == 3 and parts[1] == "functions":
            if request.method != "POST":
                return error_response(405, "MethodNotAllowed", "use POST to invoke a function",
                                      headers={"Allow": "POST"})
            return await self._admin_invoke(request, parts[2])
        return bare(404)

    def _function_status(self, name: str) -> web.Response:
        """`GET /admin/functions/{name}/status` (`FunctionsController.GetFunctionStatus`):
        `{"errors": [...]}` for a function in error, `{}` for a healthy one, 404 for none."""
        errors = self.function_errors.get(name.lower())
        if errors is not None:
            return web.json_response({"errors": errors})
        if name.lower() not in self.by_name:
            return bare(404)
        return web.json_response({})

    async def _admin_invoke(self, request: web.Request, name: str) -> web.StreamResponse:
        spec = self.by_name.get(name.lower())
        if spec is None:
            return error_response(404, "NotFound", f"no function named {name!r}")
        if spec.trigger_type == "httpTrigger" or spec.trigger_type in (
                "orchestrationTrigger", "activityTrigger", "entityTrigger"):
            return error_response(400, "BadRequest",
                                  f"function {spec.name} ({spec.trigger_type}) cannot be invoked"
                                  " through the admin API")
        raw = await request.read()
        try:
            payload = json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError, RecursionError):
            return error_response(400, "BadRequest", "body must be JSON like {\"input\": ...}")
        if not isinstance(payload, dict):
            return error_response(400, "BadRequest", "body must be a JSON object")
        try:
            await self.admin_invoke(spec, payload.get("input"))
        except DevHostError as exc:
            return error_response(400, "BadRequest", str(exc))
        return web.Response(status=202)

