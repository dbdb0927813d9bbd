"""A recording HTTP proxy in front of Azurite: which storage requests a client really makes.

Each of the three services (blob, queue, table) gets a loopback port that forwards every
request unchanged to Azurite and notes its method, path, query, status and answer. A client
built from `StorageProxy.connection_string` goes through it, so a test (or a measurement) can
count what the client asked for without touching the SDK. Answers are read whole and passed
on with their length, which is all Azurite and the SDKs need.
"""
from __future__ import annotations

import http.client
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from shared.storage import azurite_connection_string

SERVICES = ("blob", "queue", "table")
KEPT_ANSWER_BYTES = 64 * 1024  # enough for any queue or table answer a test looks at


@dataclass(frozen=True)
class Seen:
    """One request that went through the proxy, and Azurite's answer."""

    service: str
    method: str
    path: str                   # decoded, without the query
    query: dict[str, str]
    status: int
    answer: bytes = b""         # the first KEPT_ANSWER_BYTES of the body

    @property
    def write(self) -> bool:
        return self.method in ("PUT", "POST", "PATCH", "MERGE", "DELETE")


@dataclass
class StorageProxy:
    """Forwarding ports for blob, queue and table; `seen` lists every request made."""

    upstream: dict[str, int]
    ports: dict[str, int] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def connection_string(self) -> str:
        return azurite_connection_string("127.0.0.1", self.ports["blob"], self.ports["queue"],
                                         self.ports["table"])

    def requests(self, where: Callable[[Seen], bool] | None = None) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if where is None or where(s)]

    def clear(self) -> None:
        with self.lock:
            self.seen.clear()

    def note(self, seen: Seen) -> None:
        with self.lock:
            self.seen.append(seen)


def _handler(proxy: StorageProxy, service: str) -> type[BaseHTTPRequestHandler]:
    upstream_port = proxy.upstream[service]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = f"127.0.0.1:{upstream_port}"
                upstream.request(self.command, self.path, body=body, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
            finally:
                upstream.close()
            parts = urlsplit(self.path)
            proxy.note(Seen(service, self.command, unquote(parts.path),
                            {k: v[-1] for k, v in parse_qs(parts.query).items()},
                            answer.status, data[:KEPT_ANSWER_BYTES]))
            self.send_response(answer.status, answer.reason)
            for key, value in answer.getheaders():
                lower = key.lower()
                # HEAD answers keep Azurite's length (the blob's size); others get the body's
                if lower in ("transfer-encoding", "connection") or (
                        lower == "content-length" and self.command != "HEAD"):
                    continue
                self.send_header(key, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward  # noqa: N815
        do_PATCH = do_MERGE = do_OPTIONS = _forward  # noqa: N815

    return Handler


@contextmanager
def storage_proxy(blob_port: int, queue_port: int, table_port: int) -> Iterator[StorageProxy]:
    """A proxy in front of the Azurite on these ports, for the duration of the block."""
    proxy = StorageProxy({"blob": blob_port, "queue": queue_port, "table": table_port})
    servers = []
    try:
        for service in SERVICES:
            server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(proxy, service))
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                             daemon=True).start()
            servers.append(server)
            proxy.ports[service] = server.server_address[1]
        yield proxy
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
