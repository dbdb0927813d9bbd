"""Run a `DevHost` on its own event loop in a background thread, for synchronous tests.

The host keeps one loop for its whole life, as `func start` does; the test thread talks to
it over HTTP and storage, and `call()` runs a coroutine on the host's loop when needed.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from devhost.host import DevHost

T = TypeVar("T")


class ThreadedHost:
    """A DevHost whose loop runs in a daemon thread; strict indexing unless `strict=False`
    (a test of a broken app should fail at `start()`, not with a 404 later), or `None`
    (setting DEVHOST_STRICT_INDEXING decides)."""

    def __init__(self, script_root: str | Path, env: Mapping[str, str] | None = None,
                 port: int = 0, strict: bool | None = True) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="devhost-loop",
                                       daemon=True)
        self.host = DevHost(script_root, port=port, env=env, strict=strict)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> DevHost:
        self.thread.start()
        try:
            self.call(self.host.start())
        except BaseException:
            self.close()
            raise
        return self.host

    def stop(self) -> None:
        try:
            self.call(self.host.stop())
        finally:
            self.close()

    def close(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        if not self.loop.is_closed() and not self.loop.is_running():
            self.loop.close()


@contextmanager
def running_host(script_root: str | Path, env: Mapping[str, str] | None = None,
                 port: int = 0, strict: bool | None = True) -> Iterator[ThreadedHost]:
    """`with running_host(dir, env) as th:` -> th.host.base_url, th.host.master_key, ..."""
    threaded = ThreadedHost(script_root, env, port, strict)
    threaded.start()
    try:
        yield threaded
    finally:
        threaded.stop()
