"""Runs every policy over every scenario and collects the figures."""
from __future__ import annotations

from bench.baselines import baselines
from bench.project import ProjectController
from bench.sim import Result, simulate
from bench.traces import Scenario, scenarios


def controllers(rate_hint: bool = True) -> list:
    return [ProjectController(rate_hint), *(cls() for cls in baselines())]


def run_scenario(scenario: Scenario, seed: int, rate_hint: bool = True) -> dict[str, Result]:
    return {c.name: simulate(scenario.trace, scenario.pool, c, seed)
            for c in controllers(rate_hint)}


def run_all(seed: int, quick: bool, rate_hint: bool = True,
            identical_boots: bool = False) -> dict[str, dict[str, Result]]:
    return {s.trace.name: run_scenario(s, seed, rate_hint)
            for s in scenarios(seed, quick, identical_boots)}


def figures(results: dict[str, dict[str, Result]]) -> dict:
    """The `--json` document: {"traces": {TRACE: {POLICY: {figure: value}}}}."""
    return {"traces": {trace: {policy: r.figures() for policy, r in by_policy.items()}
                       for trace, by_policy in results.items()}}


def dominated_by(by_policy: dict[str, Result], policy: str = "project") -> list[str]:
    """Baselines at least as good as `policy` on cost AND p95 wait, and better on one."""
    mine = by_policy[policy].figures()
    worse = []
    for name, result in by_policy.items():
        if name == policy:
            continue
        other = result.figures()
        if (other["cost_ratio"] <= mine["cost_ratio"]
                and other["p95_wait_boots"] <= mine["p95_wait_boots"]
                and (other["cost_ratio"] < mine["cost_ratio"]
                     or other["p95_wait_boots"] < mine["p95_wait_boots"])):
            worse.append(name)
    return worse
