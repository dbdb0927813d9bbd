"""`python -m agent`: run the agent until SIGTERM/SIGINT, then drain and exit 0.

`python -m agent --check` validates the configuration, prints it (without secrets) and exits.
Exit codes: 0 after a clean stop, 2 for a configuration error.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from types import FrameType

from agent.config import ConfigError, load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent", description=__doc__)
    parser.add_argument("--check", action="store_true",
                        help="validate the configuration and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("AGENT_LOG_LEVEL", "INFO").upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    # Quiet the SDK's per-request logging; our own lines say what happened.
    logging.getLogger("azure").setLevel(logging.WARNING)
    try:
        config = load()
    except ConfigError as exc:
        print(f"agent configuration error: {exc}", file=sys.stderr)
        return 2
    for name, value in config.extra_env.items():  # e.g. AZURE_CLIENT_ID from the env file
        os.environ.setdefault(name, value)
    if args.check:
        print(json.dumps(config.describe(), indent=2))
        return 0

    from agent.runner import Agent  # noqa: PLC0415 - SDK imports only when really running
    from shared import telemetry  # noqa: PLC0415

    # The agent's own records (with job, VM, attempt attributes) to Application Insights.
    telemetry.configure(logger_name="agent")
    agent = Agent(config)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("agent").info("received %s", signal.Signals(signum).name)
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
