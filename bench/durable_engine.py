"""Benchmark: fan-out/fan-in of N activities on the durable engine against a private Azurite.

    python -m bench.durable_engine [--activities 1000] [--rounds 3]

Prints wall time per round, how many replays the engine ran and the seconds spent in them.
Batching completions is what keeps the replay count (and so the time) low.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import azure.durable_functions as df

from devhost.durable.engine import DurableEngine
from devhost.durable.testing import shared_loop
from tools.azurite import Azurite


def bench_functions() -> list[Any]:
    """A tiny app: `fan` squares 0..N-1 in parallel and sums the results."""
    app = df.DFApp()

    @app.activity_trigger(input_name="n")
    def square(n: int) -> int:
        return n * n

    @app.orchestration_trigger(context_name="context")
    def fan(context: df.DurableOrchestrationContext):
        count = context.get_input()
        results = yield context.task_all(
            [context.call_activity("square", i) for i in range(count)])
        return sum(results)

    return app.get_functions()


async def _round(engine: DurableEngine, activities: int) -> tuple[float, int, float, float]:
    before = dict(engine.stats)
    started = time.perf_counter()
    instance_id = await engine.start_new("fan", None, str(activities))
    while True:
        status = await engine.status(instance_id)
        if status["runtimeStatus"] in ("Completed", "Failed"):
            break
        await asyncio.sleep(0.02)
    elapsed = time.perf_counter() - started
    assert status["output"] == sum(i * i for i in range(activities)), status
    return (elapsed, engine.stats["replays"] - before["replays"],
            engine.stats["replay_seconds"] - before["replay_seconds"],
            engine.stats["replay_cpu_seconds"] - before["replay_cpu_seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--activities", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    azurite = Azurite.start(Path(tempfile.mkdtemp(prefix="durable-bench-")))
    lt = shared_loop()
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=8)
    try:
        engine = DurableEngine(functions=bench_functions(),
                               connection_string=azurite.connection_string,
                               hub_name=f"Bench{uuid.uuid4().hex[:8]}",
                               loop=lt.loop,
                               executor=executor)
        lt.run(engine.start())
        print(f"fan-out/fan-in of {args.activities} activities")
        for number in range(1, args.rounds + 1):
            elapsed, replays, replay_s, cpu_s = lt.run(_round(engine, args.activities))
            print(f"round {number}: {elapsed:.2f} s, {replays} replays, "
                  f"{replay_s:.2f} s replaying, {cpu_s:.2f} s orchestrator CPU")
        lt.run(engine.stop())
    finally:
        executor.shutdown(wait=False)
        azurite.wipe()


if __name__ == "__main__":
    main()
