"""`python -m bench.spot`: what spot members save, and what evictions cost in waiting.

Each trace of bench/traces.py runs on three pools, in one simulated run, at a spot price of
`--spot-price` (on-demand = 1) and at each eviction rate of `--rates` (evictions per running
spot VM-hour; every rate above zero also has pool-wide bursts, one a day on average, that take
half of the spot VMs at once and refuse spot starts for 30 minutes):

- `on_demand`: the project's policy on the on-demand pool of bench.policy (the reference);
- `project_mix`: the project's policy on the same on-demand members plus as many spot members:
  spot first, on-demand as the fallback when spot is evicted or refused;
- `batch_mix`: Azure Batch's autoscale formula on the same mixed pool, 20 % of its target on
  dedicated nodes and 80 % on low-priority ones.

Money is billed seconds x price in on-demand slot-seconds per processing second (the cost ratio
of an on-demand pool); `money_vs_on_demand` divides by the reference's money on the same trace.
Results go to bench/results/spot.json; bench/report.py turns them into a table in
docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from bench.baselines import BatchMix
from bench.project import ProjectController
from bench.sim import Result, simulate
from bench.traces import PoolParams, Scenario, scenarios

RESULTS = Path(__file__).resolve().parent / "results"
BURSTS_PER_H = 1 / 24.0


def pools(base: PoolParams, spot_price: float, rate: float) -> dict[str, PoolParams]:
    mixed = dataclasses.replace(
        base, spot_vms=base.vms, spot_price=spot_price, eviction_rate_per_h=rate,
        burst_rate_per_h=BURSTS_PER_H if rate > 0 else 0.0)
    return {"on_demand": base, "project_mix": mixed, "batch_mix": mixed}


def run(seed: int, quick: bool, spot_price: float, rates: list[float],
        chosen: list[Scenario] | None = None) -> dict:
    document: dict = {"spot_price": spot_price, "bursts_per_h": BURSTS_PER_H, "traces": {}}
    for scenario in chosen or scenarios(seed, quick):
        trace = scenario.trace
        by_rate: dict[str, dict] = {}
        reference: Result | None = None
        for rate in rates:
            rows: dict[str, dict] = {}
            for name, params in pools(scenario.pool, spot_price, rate).items():
                if name == "on_demand" and reference is not None:
                    result = reference  # no spot members: evictions change nothing
                else:
                    controller = BatchMix() if name == "batch_mix" else ProjectController()
                    result = simulate(trace, params, controller, seed)
                if name == "on_demand":
                    reference = result
                rows[name] = row(result, reference)
            by_rate[f"{rate:g}"] = rows
        document["traces"][trace.name] = by_rate
    return document


def row(result: Result, reference: Result | None) -> dict:
    figures = result.figures()
    money = result.money_ratio
    return {
        "money_ratio": round(money, 4),
        "money_vs_on_demand": round(money / reference.money_ratio, 4) if reference else 1.0,
        "cost_ratio": figures["cost_ratio"],
        "p95_wait_boots": figures["p95_wait_boots"],
        "p50_wait_boots": figures["p50_wait_boots"],
        "spot_share_of_billed": round(result.billed_spot_s / result.billed_s, 4),
        "evictions": result.evictions,
        "lost_work_share": round(result.lost_work_s / result.work_s, 4),
        "starts": result.starts,
    }


def render(document: dict) -> str:
    lines = [f"spot price {document['spot_price']:g} x on-demand; bursts "
             f"{document['bursts_per_h'] * 24:g}/day when evictions > 0"]
    header = (f"{'trace':<11} {'evict/VM-h':>10} {'pool':<12} {'money':>7} {'vs on-dem':>9} "
              f"{'p95 wait':>8} {'spot %':>7} {'evictions':>9}")
    lines += [header, "-" * len(header)]
    for trace, by_rate in document["traces"].items():
        for rate, rows in by_rate.items():
            for name, r in rows.items():
                lines.append(
                    f"{trace:<11} {rate:>10} {name:<12} {r['money_ratio']:>7.3f} "
                    f"{r['money_vs_on_demand']:>9.3f} {r['p95_wait_boots']:>8.2f} "
                    f"{100 * r['spot_share_of_billed']:>6.1f}% {r['evictions']:>9}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.spot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a quarter of each trace")
    parser.add_argument("--spot-price", type=float, default=0.2)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.05, 0.2])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--json", action="store_true", help="print the JSON document only")
    args = parser.parse_args(argv)
    document = run(args.seed, args.quick, args.spot_price, args.rates)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "spot-quick.json" if args.quick else "spot.json"
    (args.out / name).write_text(json.dumps(document, indent=2) + "\n")
    sys.stdout.write(json.dumps(document) + "\n" if args.json else render(document))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
