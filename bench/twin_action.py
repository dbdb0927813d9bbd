"""The action of `bench.twin`'s local VMs: `twin_action.py INPUT OUTPUT`.

The input file says how long its processing takes (`{"seconds": 12.5}`, the trace's processing
time of that file); the action sleeps that long, as a slot busy with real work would be, and
writes what it did.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    source, target = Path(argv[1]), Path(argv[2])
    seconds = float(json.loads(source.read_text())["seconds"])
    time.sleep(max(0.0, seconds))
    target.write_text(json.dumps({"slept_s": seconds}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
