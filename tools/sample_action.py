"""The action `make run` gives its local VMs: `sample_action.py INPUT OUTPUT`.

It stands in for the heavy, single-threaded processing a real pool VM runs: it reads a JSON
file (as the sample collector writes them, or any JSON), computes summary statistics of every
list of numbers it finds, and writes them as JSON. Non-JSON input is summarised by size.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any


def _numbers(value: Any, path: str, out: dict[str, list[float]]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _numbers(item, f"{path}.{key}" if path else str(key), out)
    elif isinstance(value, list):
        nums = [v for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if nums and len(nums) == len(value):
            out[path or "$"] = [float(v) for v in nums]
        else:
            for index, item in enumerate(value):
                _numbers(item, f"{path}[{index}]", out)


def summarise(data: bytes) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except ValueError:
        return {"kind": "bytes", "size": len(data)}
    series: dict[str, list[float]] = {}
    _numbers(document, "", series)
    return {"kind": "json", "size": len(data), "series": {
        name: {"count": len(v), "min": min(v), "max": max(v), "mean": statistics.fmean(v),
               "stdev": statistics.pstdev(v)} for name, v in series.items()}}


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: sample_action.py INPUT OUTPUT", file=sys.stderr)
        return 2
    source, target = Path(argv[1]), Path(argv[2])
    target.write_text(json.dumps(summarise(source.read_bytes()), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
