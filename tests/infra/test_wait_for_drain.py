"""The deployment gate against a real HTTP server on loopback that plays the status endpoint."""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from scripts import wait_for_drain as gate

KEY = "test-function-key"


class StatusServer:
    """Answers GET /api/deployment/status from a script of (status code, body) replies."""

    def __init__(self, replies: list[tuple[int, bytes]]) -> None:
        self.replies = list(replies)
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                server.requests.append((self.path, self.headers.get("x-functions-key")))
                if self.headers.get("x-functions-key") != KEY:
                    code, body = 401, b""
                elif self.path != gate.STATUS_PATH:
                    code, body = 404, b""
                else:
                    code, body = server.replies.pop(0) if len(server.replies) > 1 \
                        else server.replies[0]
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _json(body: object) -> bytes:
    return json.dumps(body).encode()


RUNNING = (200, _json({"hasRunning": True, "active": 2}))
DRAINED = (200, _json({"hasRunning": False, "active": 0}))


@pytest.fixture()
def serve() -> Iterator:
    servers: list[StatusServer] = []

    def start(replies: list[tuple[int, bytes]]) -> StatusServer:
        servers.append(StatusServer(replies))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _main(server: StatusServer, *extra: str) -> int:
    return gate.main(["--url", server.url + "/", "--key", KEY, "--interval", "0.01", *extra])


def test_waits_until_nothing_runs(serve) -> None:
    server = serve([RUNNING, (503, b""), RUNNING, DRAINED])
    assert _main(server, "--timeout", "60") == 0
    assert len(server.requests) == 4
    assert all(path == gate.STATUS_PATH and key == KEY for path, key in server.requests)


def test_gives_up_when_orchestrations_keep_running(serve) -> None:
    server = serve([RUNNING])
    assert _main(server, "--timeout", "0.05") == 1
    assert len(server.requests) >= 1


def test_a_refused_key_fails_at_once(serve) -> None:
    server = serve([DRAINED])
    code = gate.main(["--url", server.url, "--key", "wrong", "--timeout", "60",
                      "--interval", "0.01"])
    assert code == 1
    assert len(server.requests) == 1


@pytest.mark.parametrize("body", [b"not json", _json({"running": False}),
                                  _json({"hasRunning": "false"}), _json([False])])
def test_an_answer_without_boolean_hasrunning_fails_at_once(serve, body: bytes) -> None:
    server = serve([(200, body)])
    assert _main(server, "--timeout", "60") == 1
    assert len(server.requests) == 1


def test_bad_arguments_are_refused_before_any_request(serve, monkeypatch) -> None:
    server = serve([DRAINED])
    monkeypatch.delenv("FUNCTION_KEY", raising=False)
    assert gate.main(["--url", server.url]) == 1
    assert gate.main(["--url", "ftp://example", "--key", KEY]) == 1
    assert gate.main(["--url", server.url, "--key", KEY, "--interval", "0"]) == 1
    assert server.requests == []


def test_wait_for_drain_counts_time_with_the_given_clock() -> None:
    """With a fake clock and an unreachable port: polls, logs each failure, then gives up."""
    now = [0.0]
    lines: list[str] = []
    drained = gate.wait_for_drain(
        "http://127.0.0.1:9/api/deployment/status", KEY, timeout=100, interval=30,
        log=lines.append, clock=lambda: now[0],
        sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert drained is False
    assert len(lines) == 5 and all("no answer" in line for line in lines)
