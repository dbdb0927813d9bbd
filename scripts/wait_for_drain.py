"""Deployment gate: wait until the app has no pending or running orchestration.

Polls `GET {url}/api/deployment/status` (with a function key) until it answers
`{"hasRunning": false}`, then exits 0; exits 1 when the time is up, or at once when the answer
can never become "drained" (refused key, unknown route, a body without `hasRunning`). Use it
before `az functionapp deployment slot swap`, so production swaps only while nothing runs:

    python scripts/wait_for_drain.py --url "$(azd env get-value AZURE_FUNCTION_URL)" --timeout 3600
    # key from --key or the FUNCTION_KEY environment variable

Transient trouble (5xx, timeouts, connection errors) is reported and polled again. Standard
library only, so any CI agent with Python can run it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

STATUS_PATH = "/api/deployment/status"
MAX_BODY_BYTES = 1024 * 1024


class GateError(Exception):
    """The status endpoint answered in a way that waiting cannot change."""


class TransientGateError(Exception):
    """No usable answer this time (5xx, timeout, connection error); worth another poll."""


@dataclass(frozen=True)
class Status:
    has_running: bool
    body: dict


def status_url(base_url: str, path: str = STATUS_PATH) -> str:
    base = base_url.strip().rstrip("/")
    if not base.startswith(("https://", "http://")):
        raise GateError(f"--url must be an http(s) URL, got {base_url!r}")
    return base + "/" + path.lstrip("/")


def check_once(url: str, key: str, timeout: float = 30.0) -> Status:
    """One GET of the status endpoint, parsed; raises GateError or TransientGateError."""
    request = urllib.request.Request(url, headers={"x-functions-key": key,
                                                   "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            raw = response.read(MAX_BODY_BYTES + 1)
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code == 429:
            raise TransientGateError(f"HTTP {exc.code} from {url}") from None
        raise GateError(f"HTTP {exc.code} from {url}: check the URL and the function key") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TransientGateError(f"no answer from {url}: {reason}") from None
    if len(raw) > MAX_BODY_BYTES:
        raise GateError(f"the answer from {url} is larger than {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise GateError(f"the answer from {url} is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("hasRunning"), bool):
        raise GateError(f"the answer from {url} has no boolean hasRunning: {str(body)[:200]}")
    return Status(has_running=body["hasRunning"], body=body)


def wait_for_drain(url: str, key: str, timeout: float, interval: float,
                   log: Callable[[str], None] = print,
                   clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> bool:
    """Poll until drained (True) or `timeout` seconds have passed (False); GateError escapes."""
    deadline = clock() + timeout
    attempt = 0
    while True:
        attempt += 1
        try:
            status = check_once(url, key, timeout=min(30.0, max(1.0, interval * 2)))
        except TransientGateError as exc:
            log(f"poll {attempt}: {exc}")
        else:
            if not status.has_running:
                log(f"poll {attempt}: no orchestration pending or running")
                return True
            log(f"poll {attempt}: orchestrations still running")
        remaining = deadline - clock()
        if remaining <= 0:
            return False
        sleep(min(interval, remaining))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True,
                        help="base URL of the app or slot: https:// and its defaultHostName")
    parser.add_argument("--key", default=os.environ.get("FUNCTION_KEY", ""),
                        help="function key (default: $FUNCTION_KEY)")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds to wait at most (default 3600)")
    parser.add_argument("--interval", type=float, default=30.0,
                        help="seconds between polls (default 30)")
    parser.add_argument("--path", default=STATUS_PATH, help=f"status route (default {STATUS_PATH})")
    args = parser.parse_args(argv)
    if not args.key:
        print("wait_for_drain: no function key (--key or FUNCTION_KEY)", file=sys.stderr)
        return 1
    if args.timeout < 0 or args.interval <= 0:
        print("wait_for_drain: --timeout must be >= 0 and --interval > 0", file=sys.stderr)
        return 1
    try:
        url = status_url(args.url, args.path)
        drained = wait_for_drain(url, args.key, args.timeout, args.interval,
                                 log=lambda line: print(f"wait_for_drain: {line}", flush=True))
    except GateError as exc:
        print(f"wait_for_drain: {exc}", file=sys.stderr)
        return 1
    if not drained:
        print(f"wait_for_drain: still running after {args.timeout:g} s; not swapping",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
