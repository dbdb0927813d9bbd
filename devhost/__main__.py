"""`python -m devhost start --script-root DIR [--port 7071]`: run a function app like `func start`.

Serves until SIGINT or SIGTERM, then stops cleanly with exit code 0. A configuration problem
exits with code 1 and a one-line message; an app that fails to index is logged and served with
no functions, as the real host does, unless `--strict-indexing` (or setting
DEVHOST_STRICT_INDEXING=true) makes that exit with code 1 too.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from pathlib import Path

from devhost.config import read_local_settings
from devhost.errors import ConfigError, DevHostError
from devhost.host import DevHost

DEFAULT_PORT = 7071


class ConsoleFormatter(logging.Formatter):
    """Log lines as `func start` prints them: `[2024-05-01T10:00:00.123Z] message`, the
    message itself whoever logged it (the app's `logging.info("x")` shows as `x`);
    `--verbose` adds level and logger name."""

    def __init__(self, verbose: bool = False) -> None:
        super().__init__("[%(asctime)s] %(levelname)s %(name)s: %(message)s" if verbose
                         else "[%(asctime)s] %(message)s")
        self.converter = time.gmtime

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devhost",
                                     description="Local stand-in for the Azure Functions host")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="run the function app in --script-root")
    start.add_argument("--script-root", default=".", help="folder with function_app.py")
    start.add_argument("--port", type=int, default=None,
                       help="HTTP port (default: Host.LocalHttpPort or 7071)")
    start.add_argument("--host", default="127.0.0.1", help="address to listen on")
    start.add_argument("--enable-auth", "--enableAuth", dest="enable_auth", action="store_true",
                       default=None, help="check keys as Azure does (default: like func"
                       " start, no key checks; setting DEVHOST_ENABLE_AUTH=true does the same)")
    start.add_argument("--strict-indexing", dest="strict", action="store_true", default=None,
                       help="exit with code 1 when the app fails to import or a function fails"
                       " to index (default: like the real host, log it and keep serving;"
                       " setting DEVHOST_STRICT_INDEXING=true does the same)")
    start.add_argument("--verbose", action="store_true", help="debug logging")
    return parser


async def _serve(host: DevHost) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await host.start()
    try:
        print(host.describe(), flush=True)
        print(f"Host started on {host.base_url} (Ctrl+C to stop)", flush=True)
        await stop.wait()
        print("Stopping host...", flush=True)
    finally:
        await host.stop()
    print("Host stopped.", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ConsoleFormatter(verbose=args.verbose))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        handlers=[handler])
    for noisy in ("azure.core.pipeline.policies.http_logging_policy", "azure.identity",
                  "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    root = Path(args.script_root)
    try:
        port = args.port
        if port is None:
            _values, host_section = read_local_settings(root)
            raw_port = host_section.get("LocalHttpPort") or DEFAULT_PORT
            if not str(raw_port).isdigit() or not 0 < int(raw_port) < 65536:
                raise ConfigError(f"local.settings.json Host.LocalHttpPort: bad port {raw_port!r}")
            port = int(raw_port)
        asyncio.run(_serve(DevHost(root, port=port, host=args.host, enable_auth=args.enable_auth,
                                   strict=args.strict)))
    except DevHostError as exc:
        print(f"devhost: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except OSError as exc:
        print(f"devhost: error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
