"""Run a DurableEngine behind a small HTTP server from synchronous code (tests, benchmarks).

The durable client SDK keeps one aiohttp session per process, bound to the event loop that
first used it, so everything here runs on one long-lived loop in a daemon thread shared by
the whole process (`shared_loop()`).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import itertools
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from azure.durable_functions import DurableOrchestrationClient
from azure.durable_functions.models.DurableOrchestrationStatus import DurableOrchestrationStatus

from devhost.durable.engine import DurableEngine
from devhost.durable.http_api import PREFIX, DurableHttpApi

T = TypeVar("T")
_loop_lock = threading.Lock()
_loop: LoopThread | None = None
_module_ids = itertools.count()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LoopThread:
    """An event loop running forever in a daemon thread; `run` waits for a coroutine."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="durable-loop",
                                       daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[T], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


def shared_loop() -> LoopThread:
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = LoopThread()
        return _loop


def load_functions(app_file: Path) -> list[Any]:
    """Import a function_app.py afresh (a new module each time) and index its functions."""
    name = f"_durable_app_{next(_module_ids)}"
    spec = importlib.util.spec_from_file_location(name, app_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.app.get_functions()


class EngineServer:
    """A DurableEngine plus an aiohttp server routing the durable webhooks to it."""

    def __init__(self, app_file: Path, connection_string: str, hub_name: str,
                 executor: concurrent.futures.ThreadPoolExecutor,
                 default_version: str | None = None) -> None:
        self.lt = shared_loop()
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.functions = load_functions(app_file)
        self.engine = DurableEngine(
            functions=self.functions, connection_string=connection_string,
            hub_name=hub_name, loop=self.lt.loop, executor=executor,
            default_version=default_version)
        self.api = DurableHttpApi(self.engine, self.base_url)
        self._runner: web.AppRunner | None = None

    def start(self) -> EngineServer:
        self.lt.run(self._start())
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", PREFIX + "{tail:.*}", self.api.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        await self.engine.start()

    def stop(self) -> None:
        self.lt.run(self._stop())

    async def _stop(self) -> None:
        await self.engine.stop()
        if self._runner is not None:
            await self._runner.cleanup()

    def client(self) -> SyncClient:
        return SyncClient(self)


class SyncClient:
    """The SDK's DurableOrchestrationClient, called from synchronous code."""

    def __init__(self, server: EngineServer) -> None:
        self.server = server
        self.sdk = DurableOrchestrationClient(server.api.client_binding_json())

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.sdk, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            if asyncio.iscoroutine(result):
                return self.server.lt.run(result)
            return result

        return call

    def wait(self, instance_id: str, until: Callable[[DurableOrchestrationStatus], bool]
             | None = None, timeout: float = 60.0) -> DurableOrchestrationStatus:
        """Poll get_status until `until` holds (default: a finished status)."""
        finished = {"Completed", "Failed", "Terminated", "Canceled"}
        until = until or (lambda s: bool(s) and s.runtime_status.value in finished)
        deadline = time.monotonic() + timeout
        while True:
            status = self.get_status(instance_id)
            if until(status):
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"instance {instance_id} still {status.runtime_status}")
            time.sleep(0.05)
