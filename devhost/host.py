"""`DevHost`: one running local host for one script root (settings, app, server, triggers).

One long-lived asyncio loop serves HTTP and runs every async function (the durable SDK keeps
one aiohttp session per process); sync functions run on a thread pool; blocking storage calls
run on a separate I/O pool so busy functions never starve the trigger listeners.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import socket
import sys
import uuid
from collections.abc import Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp import web
from azure.functions import meta
from azure.functions.queue import QueueMessage
from azure.functions.timer import TimerRequestConverter

from devhost.blobs import BlobPoller, BlobTrigger, EventGridWebhook, is_event_grid
from devhost.config import (
    HostConfig,
    disabled_functions,
    load_host_config,
    read_local_settings,
)
from devhost.connections import ConnectionSettingError, HostConnection
from devhost.durable.engine import DurableEngine
from devhost.durable.http_api import DurableHttpApi
from devhost.errors import BindingError, ConfigError, DevHostError, IndexingError, InvocationError
from devhost.http_front import MAX_BODY_BYTES, HttpFront, error_response
from devhost.invoker import Invoker, base_type, blob_argument
from devhost.keys import HostKeys, truthy
from devhost.loader import FunctionSpec, LoadedApp, load_app
from devhost.queues import QueueListener, QueueWatcher
from devhost.routes import RouteTemplate
from devhost.storage_bindings import StorageBindings, split_blob_path
from devhost.timers import TimerRunner

log = logging.getLogger("devhost")

BLOB_POLL_SETTING = "DEVHOST_BLOB_POLL_SECONDS"
QUEUE_POLL_SETTING = "DEVHOST_QUEUE_MAX_POLL_SECONDS"
HOST_ID_SETTING = "AzureFunctionsWebHost__hostid"
BODY_LIMIT_SETTING = "FUNCTIONS_REQUEST_BODY_SIZE_LIMIT"
STRICT_SETTING = "DEVHOST_STRICT_INDEXING"
RPC_PATH = "/durabletask"
#: `orchestrationClient` is the Durable extension's 1.x name of `durableClient`, still bound
#: (durable-extension `DurableTaskExtension.cs` keeps a binding rule for the old name).
DURABLE_CLIENT_TYPES = frozenset({"durableClient", "orchestrationClient"})
SUPPORTED_BINDINGS = frozenset({"blob", "queue", "table", "http", *DURABLE_CLIENT_TYPES})
STORAGELESS_TRIGGERS = frozenset({"httpTrigger", "orchestrationTrigger", "activityTrigger",
                                  "entityTrigger"})
SUPPORTED_TRIGGERS = frozenset({"httpTrigger", "timerTrigger", "blobTrigger", "queueTrigger",
                                "orchestrationTrigger", "activityTrigger", "entityTrigger"})


def host_id_for(script_root: Path, settings: Mapping[str, str]) -> str:
    """The host id (names the receipts and timer status); like the host's, at most 32 chars."""
    raw = settings.get(HOST_ID_SETTING) or script_root.resolve().name or "devhost"
    slug = re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-")[:32].strip("-")
    if not slug:
        raise ConfigError(f"{HOST_ID_SETTING}: {raw!r} gives an empty host id")
    return slug


def _float_setting(settings: Mapping[str, str], name: str, default: float | None,
                   low: float = 0.05, high: float = 3600) -> float | None:
    raw = (settings.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"setting {name}: expected seconds, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"setting {name}: expected {low:g} to {high:g}, got {raw!r}")
    return value


RPC_DEFAULT_PORT = 17071
RPC_PORTS = range(30000, 31000)
RPC_ATTEMPTS = 10


def bind_rpc_socket() -> socket.socket:
    """The durable RPC listener's socket, picked as the extension's `LocalHttpListener` picks
    it: 17071 first, then random ports of 30000-30999 (below the ephemeral range), ten tries in
    all, so several hosts on one machine each get one."""
    tried: set[int] = set()
    for attempt in range(RPC_ATTEMPTS):
        port = RPC_DEFAULT_PORT if attempt == 0 else random.choice(
            [p for p in RPC_PORTS if p not in tried])
        tried.add(port)
        try:
            sock = socket.create_server(("127.0.0.1", port), reuse_port=False)
        except OSError:
            log.warning("failed to open local port %d (attempt #%d of %d)", port, attempt + 1,
                        RPC_ATTEMPTS)
            continue
        sock.setblocking(False)
        return sock
    raise ConfigError(f"unable to open a durable RPC port after {RPC_ATTEMPTS} attempts")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket, bound now so the port is known before anything starts."""
    try:
        sock = socket.create_server((host, port), reuse_port=False)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


async def close_durable_client_session() -> None:
    """Close the durable SDK's per-process HTTP session if it belongs to the running loop
    (a session made on another loop is left to its owner)."""
    module = sys.modules.get("azure.durable_functions.models.utils.http_utils")
    close = getattr(module, "_close_session", None)
    session = getattr(module, "_client_session", None)
    if close is not None and session is not None and getattr(
            session, "_loop", None) is asyncio.get_running_loop():
        try:
            await close()
        except Exception as exc:  # noqa: BLE001 - closing is best effort at shutdown
            log.debug("closing the durable client session failed: %s", exc)


def forget_foreign_durable_client_session() -> None:
    """Drop the durable SDK's per-process HTTP session when it was made on another event loop.

    The SDK keeps one aiohttp session (and one lock) per process, bound to the loop that first
    used them. The real host runs one loop per worker process for its whole life, so that loop
    is always the right one; a test process that runs several in-process hosts one after another
    (each on its own loop) would otherwise hand the next host a session it cannot use
    ("Timeout context manager should be used inside a task"). The old session's loop is gone,
    so there is nothing to close; the SDK makes a new session on first use."""
    module = sys.modules.get("azure.durable_functions.models.utils.http_utils")
    session = getattr(module, "_client_session", None)
    if session is None or getattr(session, "_loop", None) is asyncio.get_running_loop():
        return
    module._client_session = None
    module._session_lock = asyncio.Lock()


class DevHost:
    """A local Functions host for `script_root`, serving on `host:port` (0 = any free port).

    `env` entries override the process environment; local.settings.json `Values` fill in
    what neither sets. `start()`/`stop()` must run on the loop that serves the host.

    Like the real host it keeps running when the app cannot be indexed: an app the worker
    cannot index (import error, no FunctionApp, inconsistent function) runs with no
    functions; a function the host cannot bind (unresolved `%NAME%`, unsupported trigger or
    binding, no storage) is left out and in error (`GET /admin/functions/{name}/status`);
    a durable engine that cannot start puts the host in state `Error` (`GET
    /admin/host/status` lists `errors`). `strict=True` (or setting DEVHOST_STRICT_INDEXING)
    raises instead, so the start fails.
    """

    def __init__(self, script_root: str | Path, port: int = 7071, env: Mapping[str, str] | None
                 = None, host: str = "127.0.0.1", enable_auth: bool | None = None,
                 strict: bool | None = None) -> None:
        self.script_root = Path(script_root).resolve()
        self.port = port
        self.bind_host = host
        self.env = dict(env or {})
        self.enable_auth = enable_auth  # None: setting DEVHOST_ENABLE_AUTH decides
        self.strict = strict  # None: setting DEVHOST_STRICT_INDEXING decides
        self.state = "Default"  # the host's ScriptHostState names: Running, Error
        self.errors: list[str] = []  # why the host is in state Error
        self.function_errors: dict[str, list[str]] = {}
        self.queue_watcher = QueueWatcher()
        self.config = HostConfig()
        self.keys: HostKeys | None = None
        self.host_id = ""
        self.loaded: LoadedApp | None = None
        self.engine: DurableEngine | None = None
        self.durable_api: DurableHttpApi | None = None
        self._rpc_runner: web.AppRunner | None = None
        self.front: HttpFront | None = None
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[Any]] = []
        self._runner: web.AppRunner | None = None
        self._saved_env: dict[str, str] | None = None
        self._host_section: dict[str, Any] = {}
        self._added_path = False
        self._executor: ThreadPoolExecutor | None = None
        self._io_executor: ThreadPoolExecutor | None = None
        self.invoker: Invoker | None = None
        self.blob_triggers: dict[str, BlobTrigger] = {}
        self.disabled: frozenset[str] = frozenset()
        self.blob_pollers: list[BlobPoller] = []
        self.queue_listeners: list[QueueListener] = []
        self.timers: list[TimerRunner] = []

    @property
    def base_url(self) -> str:
        return f"http://{self.bind_host}:{self.port}"

    @property
    def master_key(self) -> str:
        assert self.keys is not None
        return self.keys.master

    @property
    def function_key(self) -> str:
        assert self.keys is not None
        return self.keys.function

    # --- start ------------------------------------------------------------------------------

    def _apply_settings(self) -> dict[str, str]:
        values, host_section = read_local_settings(self.script_root)
        self._saved_env = dict(os.environ)
        os.environ.update(self.env)
        for key, value in values.items():
            os.environ.setdefault(key, value)
        os.environ.setdefault("AzureWebJobsScriptRoot", str(self.script_root))
        self._host_section = host_section
        return dict(os.environ)

    async def start(self) -> None:
        """Load settings and the app, bind the server, then start every trigger."""
        loop = asyncio.get_running_loop()
        try:
            await self._start(loop)
        except BaseException:
            await self.stop()
            raise

    async def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        forget_foreign_durable_client_session()
        if not self.script_root.is_dir():
            raise ConfigError(f"script root {self.script_root} does not exist")
        settings = self._apply_settings()
        self.config = load_host_config(self.script_root, settings)
        self.host_id = host_id_for(self.script_root, settings)
        blob_poll = _float_setting(settings, BLOB_POLL_SETTING, 10.0)
        queue_poll = _float_setting(settings, QUEUE_POLL_SETTING, None)
        self.keys = HostKeys.from_settings(settings, self.enable_auth)
        if self.strict is None:
            self.strict = truthy(settings.get(STRICT_SETTING))
        self._added_path = str(self.script_root) not in sys.path
        self.loaded = self._index(settings)
        threads = int(_float_setting(settings, "PYTHON_THREADPOOL_THREAD_COUNT", None, 1, 1000)
                      or min(32, (os.cpu_count() or 1) + 4))
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="devhost-fn")
        self._io_executor = ThreadPoolExecutor(8, thread_name_prefix="devhost-io")
        timeout = (self.config.function_timeout.total_seconds()
                   if self.config.function_timeout else None)
        storage = StorageBindings()
        self.invoker = Invoker(loop, self._executor, self._io_executor, storage,
                               str(self.script_root), timeout)
        self.invoker.on_queue_write = lambda connection, queue: self.queue_watcher.notify(
            storage.queue_account(connection), queue)
        self.disabled = disabled_functions([s.name for s in self.loaded.specs], settings)
        for name in sorted(self.disabled):
            log.info("function %s is disabled by its AzureWebJobs.%s.Disabled setting",
                     name, name)
        body_limit = int(_float_setting(settings, BODY_LIMIT_SETTING, MAX_BODY_BYTES, 1024,
                                        2**31) or MAX_BODY_BYTES)
        sock = bind_socket(self.bind_host, self.port)
        self.port = sock.getsockname()[1]
        try:
            if any(s.uses_durable for s in self.loaded.specs):
                # before serving: the first request may need the engine
                await self._start_durable_or_fail(loop, settings, body_limit)
            specs = self.loaded.specs if self.state != "Error" else []
            if specs:
                self._build_triggers(specs, blob_poll or 10.0, queue_poll)
            webhook = EventGridWebhook({n: t for n, t in self.blob_triggers.items()
                                        if is_event_grid(t.spec) and n not in self.disabled},
                                       self.keys, self.spawn)
            self.front = HttpFront(
                specs, self.config.route_prefix, self.keys, self.invoker,
                admin_invoke=self.admin_invoke, blobs_webhook=webhook.handle,
                durable_webhook=(self._durable_http if any(s.uses_durable for s in specs)
                                 else None), status=self.status,
                function_errors=self.function_errors, max_body_bytes=body_limit,
                disabled=self.disabled,
                cors=str(self._host_section.get("CORS") or ""),
                cors_credentials=bool(self._host_section.get("CORSCredentials")))
            self._runner = web.AppRunner(self.front.application(), access_log=None,
                                         handle_signals=False)
            await self._runner.setup()
            await web.SockSite(self._runner, sock).start()
        except BaseException:
            sock.close()
            raise
        if self.state != "Error":
            self.state = "Running"
        for runner in [*self.timers, *self.blob_pollers, *self.queue_listeners]:
            task = loop.create_task(runner.run())
            task.add_done_callback(self._task_done)
            self._loops.append(task)

    def _index(self, settings: Mapping[str, str]) -> LoadedApp:
        """Import and index the app. Not strict, as the real host: an app the worker cannot
        index runs with no functions (`GrpcWorkerChannel` logs "Worker failed to index
        functions" and the host goes on), and each function the host cannot bind is left
        out with its errors (`ScriptHost.FunctionErrors`, "The 'X' function is in error")."""
        errors: dict[str, list[str]] | None = None if self.strict else {}
        try:
            loaded = load_app(self.script_root, settings, errors)
        except IndexingError as exc:
            if self.strict:
                raise
            cause = exc.__cause__
            log.error("Worker failed to index functions\nResult: Failure\nException: %s", exc,
                      exc_info=(type(cause), cause, cause.__traceback__) if cause else None)
            loaded = LoadedApp(None, None, [], [])
        self.loaded = loaded  # so that stop() forgets the module even if strict raises below
        function_errors = errors or {}
        for spec in loaded.specs:
            problem = self._host_problem(spec, settings)
            if problem is not None:
                if self.strict:
                    raise ConfigError(problem)
                function_errors.setdefault(spec.name, []).append(problem)
        loaded.specs = [s for s in loaded.specs if s.name not in function_errors]
        loaded.functions = [f for f in loaded.functions
                            if f.get_function_name() not in function_errors]
        for name, messages in function_errors.items():
            log.error("The '%s' function is in error: %s", name, "\n".join(messages))
        if not loaded.specs:
            log.warning("No job functions found.")
        self.function_errors = function_errors
        return loaded

    @staticmethod
    def _host_problem(spec: FunctionSpec, settings: Mapping[str, str]) -> str | None:
        """Why the host cannot bind this function (an extension devhost lacks, or no
        storage for a storage trigger), or None."""
        if spec.trigger_type not in SUPPORTED_TRIGGERS:
            return f"function {spec.name}: trigger {spec.trigger_type} is not supported by devhost"
        if spec.trigger_type not in STORAGELESS_TRIGGERS:
            try:
                HostConnection.resolve("AzureWebJobsStorage", settings)
            except ConnectionSettingError as exc:
                return (f"function {spec.name}: AzureWebJobsStorage is required for"
                        f" {spec.trigger_type} functions ({exc})")
        for binding in spec.inputs() + spec.outputs():
            if binding.get("type") not in SUPPORTED_BINDINGS:
                return (f"function {spec.name}: binding {binding.get('name')!r} of type"
                        f" {binding.get('type')} is not supported by devhost")
        if spec.trigger_type == "httpTrigger":
            try:
                RouteTemplate.parse(str(spec.trigger.get("route") or spec.name))
            except DevHostError as exc:  # RouteTemplateError
                return f"function {spec.name}: {exc}"
        return None

    async def _start_durable_or_fail(self, loop: asyncio.AbstractEventLoop,
                                     settings: Mapping[str, str], body_limit: int) -> None:
        """Start the durable engine. When it cannot start and the host is not strict, the
        host goes to state Error with the reason (`WebJobsScriptHostService`: a failed
        start sets `LastError` and `State = Error`) and serves no functions."""
        try:
            await self._start_durable(loop, settings, body_limit)
        except Exception as exc:
            if self.strict:
                raise
            log.error("A host error has occurred during startup operation: %s", exc,
                      exc_info=exc if not isinstance(exc, DevHostError) else None)
            await self._stop_durable()
            self.state = "Error"
            self.errors = [f"{type(exc).__name__}: {exc}" if not isinstance(
                exc, DevHostError) else str(exc)]

    def _build_triggers(self, specs: list[FunctionSpec], blob_poll: float,
                        queue_poll: float | None) -> None:
        assert self.invoker is not None
        storage = self.invoker.storage
        for spec in specs:
            # A disabled function gets no listener, so its trigger never fires; admin invoke
            # still runs it (its blob trigger object is kept for that).
            disabled = spec.name in self.disabled
            if spec.trigger_type == "timerTrigger" and not disabled:
                self.timers.append(TimerRunner(spec, self.invoker, self.host_id, self._stop))
            elif spec.trigger_type == "blobTrigger":
                trigger = BlobTrigger(spec, self.invoker, self.host_id,
                                      self.config.queue_max_dequeue_count)
                self.blob_triggers[spec.name] = trigger
                if not disabled and not is_event_grid(spec):
                    self.blob_pollers.append(BlobPoller(
                        trigger, blob_poll, self._stop,
                        concurrency=self.config.queue_batch_size
                        + self.config.queue_new_batch_threshold))
            elif spec.trigger_type == "queueTrigger" and not disabled:
                self.queue_listeners.append(QueueListener(
                    spec, self.invoker, self.config, self._stop, queue_poll,
                    watch=lambda connection, queue: self.queue_watcher.register(
                        storage.queue_account(connection), queue)))

    async def _start_durable(self, loop: asyncio.AbstractEventLoop,
                             settings: Mapping[str, str], body_limit: int) -> None:
        """Start the durable engine, its HTTP API and the loopback RPC listener the durable
        SDK calls (the extension's `LocalHttpListener`: no keys, 127.0.0.1 only)."""
        assert self.loaded is not None and self.invoker is not None and self.keys is not None
        try:
            conn = HostConnection.resolve(self.config.durable_connection, settings)
        except ConnectionSettingError as exc:
            raise ConfigError(str(exc)) from None
        if not conn.connection_string:
            raise ConfigError(f"setting {self.config.durable_connection}: the durable engine"
                              " needs a storage connection string")
        self.engine = DurableEngine(functions=self.loaded.functions,
                                    connection_string=conn.connection_string,
                                    hub_name=self.config.hub_name, loop=loop,
                                    executor=self._executor)
        await self.engine.start()
        rpc_sock = bind_rpc_socket()
        rpc_url = f"http://127.0.0.1:{rpc_sock.getsockname()[1]}{RPC_PATH}/"
        self.durable_api = DurableHttpApi(
            self.engine, self.base_url, rpc_base_url=rpc_url,
            system_key=self.keys.durable_extension if self.keys.enforce else None)
        rpc_app = web.Application(client_max_size=body_limit)
        rpc_app.router.add_route("*", RPC_PATH + "{tail:(/.*)?}", self._durable_rpc)
        self._rpc_runner = web.AppRunner(rpc_app, access_log=None, handle_signals=False)
        try:
            await self._rpc_runner.setup()
            await web.SockSite(self._rpc_runner, rpc_sock).start()
        except BaseException:
            rpc_sock.close()
            raise
        self.invoker.durable_client_json = self.durable_api.client_binding_json

    async def _durable_rpc(self, request: web.Request) -> web.StreamResponse:
        assert self.durable_api is not None
        return await self.durable_api.handle(request, RPC_PATH)

    async def _durable_http(self, request: web.Request) -> web.StreamResponse:
        """`/runtime/webhooks/durabletask/...`: the extension's system key or the master key
        when keys are enforced (`HostController.ExtensionWebHookHandler`)."""
        assert self.keys is not None
        if not self.keys.allows_extension(
                "durabletask", HostKeys.presented(request.query, request.headers)):
            return web.Response(status=401)
        if self.durable_api is None:
            return error_response(503, "ServiceUnavailable", "the durable engine is not running")
        return await self.durable_api.handle(request)

    # --- running ----------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a background invocation; the host waits for it on stop."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        """Log what a background task or trigger loop died of (invocations log their own)."""
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if not isinstance(exc, InvocationError):
                log.error("background work failed: %s", exc, exc_info=exc)

    async def admin_invoke(self, spec: Any, value: Any) -> None:
        """`POST /admin/functions/{name}`: run a non-HTTP function with `input`, in the
        background (the caller gets 202 at once)."""
        assert self.invoker is not None
        kind = spec.trigger_type
        reason = "This function was programmatically called via the host APIs."
        text = value if isinstance(value, str) else "" if value is None else json.dumps(value)
        if kind == "timerTrigger":
            request = {"Schedule": {"AdjustForDST": True}, "ScheduleStatus": None,
                       "IsPastDue": False}
            argument = TimerRequestConverter.decode(meta.Datum(json.dumps(request), "json"),
                                                    trigger_metadata=None)
            self.spawn(self.invoker.invoke(spec, argument, {}, reason))
        elif kind == "queueTrigger":
            body = text.encode("utf-8")
            base = base_type(spec.annotation(spec.trigger["name"]))
            argument = (body if base is bytes else text if base is str else QueueMessage(
                id=str(uuid.uuid4()), body=body, dequeue_count=1))
            metadata: dict[str, Any] = {"QueueTrigger": text}
            try:
                parsed = json.loads(text)
            except (ValueError, RecursionError):
                parsed = None
            if isinstance(parsed, dict):
                metadata.update(parsed)
            self.spawn(self.invoker.invoke(spec, argument, metadata, reason))
        elif kind == "blobTrigger":
            self.spawn(self._admin_blob(spec, text))
        else:
            raise BindingError(f"function {spec.name}: admin invoke of {kind} is not supported")

    async def _admin_blob(self, spec: Any, path: str) -> None:
        assert self.invoker is not None
        trigger = self.blob_triggers[spec.name]
        container, name = split_blob_path(path)
        values = trigger.pattern.match(container, name) or {}
        found = await self.invoker.io(self.invoker.storage.read_blob, trigger.connection, path)
        if found is None:
            log.error("admin invoke of %s: blob %s does not exist", spec.name, path)
            return
        data, props = found
        metadata = {"BlobTrigger": path, "Uri": props["Uri"], "Properties": props,
                    "Metadata": props["Metadata"], **values}
        argument = blob_argument(data, spec.annotation(spec.trigger["name"]), metadata)
        await self.invoker.invoke(spec, argument, metadata,
                                  "This function was programmatically called via the host APIs.")

    def status(self) -> dict[str, Any]:
        """`GET /admin/host/status`, in the host's field names (`HostStatus`): `errors` only
        when the host failed to start (state Error); function errors are per function."""
        status: dict[str, Any] = {
            "id": self.host_id, "state": self.state, "version": "devhost",
            "functions": [s.name for s in (self.loaded.specs if self.loaded else [])]}
        if self.errors:
            status["errors"] = list(self.errors)
        return status

    def describe(self) -> str:
        """The function list printed at start, like `func start`."""
        lines = ["", "Functions:", ""]
        assert self.loaded is not None and self.front is not None
        http = {e.spec.name: e for e in self.front.http_functions}
        for spec in self.loaded.specs:
            entry = http.get(spec.name)
            if entry is not None:
                methods = ",".join(entry.methods) if entry.methods else "ALL"
                lines.append(f"        {spec.name}: [{methods}] "
                             f"{self.front.url_of(self.base_url, entry)}")
            else:
                lines.append(f"        {spec.name}: {spec.trigger_type}")
            lines.append("")
        for name, messages in self.function_errors.items():
            lines.append(f"        {name}: in error: {messages[0]}")
            lines.append("")
        if not self.loaded.specs and not self.function_errors:
            lines.append("        (none: see the errors above)")
            lines.append("")
        if self.state == "Error":
            lines.append(f"The host is in state Error: {'; '.join(self.errors)}")
            lines.append("")
        if self.keys is not None and not self.keys.enforce:
            lines.append("Keys are not checked (like func start); --enable-auth or"
                         " DEVHOST_ENABLE_AUTH=true checks them as Azure does.")
            lines.append("")
        elif self.keys is not None and self.keys.generated:
            lines.append("Generated keys (set them in local.settings.json to keep them):")
            named = self.keys.setting_values()
            for name in self.keys.generated:
                lines.append(f"        {name}={named[name]}")
            lines.append("")
        return "\n".join(lines)

    async def wait_idle(self) -> None:
        """Wait until background invocations spawned so far have finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # --- stop -------------------------------------------------------------------------------

    async def stop(self, grace: float = 30.0) -> None:
        """Stop triggers, finish running invocations, close the server, restore the env."""
        self._stop.set()
        pending = [t for t in self._loops + list(self._tasks) if not t.done()]
        if pending:
            _done, late = await asyncio.wait(pending, timeout=grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=5)
        self._loops.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._stop_durable()
        if self.loaded is not None and any(s.uses_durable for s in self.loaded.specs):
            await close_durable_client_session()
        if self._io_executor is not None:
            self._io_executor.shutdown(wait=True, cancel_futures=True)
        if self._executor is not None:
            # A sync function that outlived its timeout must not hang the stop.
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = self._io_executor = None
        self._restore()

    async def _stop_durable(self) -> None:
        if self._rpc_runner is not None:
            await self._rpc_runner.cleanup()
            self._rpc_runner = None
        self.durable_api = None
        if self.invoker is not None:
            self.invoker.durable_client_json = None
        if self.engine is not None:
            try:
                await self.engine.stop()
            except Exception as exc:  # noqa: BLE001 - shutdown goes on
                log.error("durable engine stop failed: %s", exc, exc_info=exc)
            self.engine = None

    def _restore(self) -> None:
        if self._saved_env is not None:
            os.environ.clear()
            os.environ.update(self._saved_env)
            self._saved_env = None
        if self._added_path and str(self.script_root) in sys.path:
            sys.path.remove(str(self.script_root))
            self._added_path = False
        if (self.loaded is not None and self.loaded.module is not None
                and sys.modules.get("function_app") is self.loaded.module):
            del sys.modules["function_app"]


__all__ = ["DevHost", "DevHostError"]
