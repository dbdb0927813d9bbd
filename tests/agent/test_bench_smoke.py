"""The throughput benchmark runs end to end on a handful of files and prints its figures."""
from __future__ import annotations

import re

import pytest

from bench.agent_throughput import main


def test_benchmark_prints_both_rates_and_their_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--files", "5", "--size", "64"]) == 0
    out = capsys.readouterr().out
    raw = float(re.search(r"raw blob download\+upload:\s+([\d.]+) files/s", out).group(1))
    agent = float(re.search(r"agent end to end:\s+([\d.]+) files/s", out).group(1))
    ratio = float(re.search(r"agent / raw:\s+([\d.]+)", out).group(1))
    assert raw > 0 and agent > 0
    assert ratio == pytest.approx(agent / raw, rel=0.1, abs=0.02)  # printed rounded
