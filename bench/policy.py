"""`python -m bench.policy`: what the pool policy costs and how long work waits, against baselines.

Runs the project's `decide` and the baselines (see bench/baselines.py) over seeded traces in one
simulated run, prints the figures (a table, or `--json`), and writes the JSON and a plot of cost
against p95 wait to bench/results/. Definitions are in docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from io import StringIO
from pathlib import Path

from bench.project import ProjectController
from bench.run import dominated_by, figures, run_all
from bench.sim import Result

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.policy", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON only")
    parser.add_argument("--quick", action="store_true",
                        help="a quarter of each trace's length (about ten seconds)")
    parser.add_argument("--seed", type=int, default=1, help="trace and boot-time seed")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where JSON and PNG go")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument("--no-rate-hint", action="store_true",
                        help="run the policy without the recent arrival rate (files get a "
                             "-norate suffix)")
    parser.add_argument("--identical-boots", action="store_true",
                        help="every VM has the same typical boot time (files get a -sameboot "
                             "suffix)")
    parser.add_argument("--min-warm", type=float, default=None,
                        help="the policy's least warm time in seconds (default: the policy's; "
                             "0 is the policy without the floor; files get a -minwarmN suffix)")
    return parser.parse_args(argv)


def render_table(results: dict[str, dict[str, Result]]) -> str:
    """A readable side-by-side table, one block per trace."""
    from rich.console import Console  # noqa: PLC0415 - only the table needs rich
    from rich.table import Table  # noqa: PLC0415

    buffer = StringIO()
    console = Console(file=buffer, width=110, color_system=None)
    for trace, by_policy in results.items():
        any_result = next(iter(by_policy.values()))
        table = Table(title=f"{trace}: {len(any_result.waits_s)} files, "
                            f"work {any_result.work_s / 3600:.0f} h, "
                            f"boot {any_result.boot_ref_s:.0f} s, slots {any_result.slots}")
        for column in ("policy", "cost ratio", "p50 wait (boots)", "p95 wait (boots)",
                       "makespan (s)", "VM starts"):
            table.add_column(column, justify="left" if column == "policy" else "right")
        for policy, result in by_policy.items():
            f = result.figures()
            table.add_row(policy, f"{f['cost_ratio']:.3f}", f"{f['p50_wait_boots']:.2f}",
                          f"{f['p95_wait_boots']:.2f}", f"{f['makespan_s']:.0f}",
                          str(result.starts))
        console.print(table)
        beaten = dominated_by(by_policy)
        console.print("  baselines at least as good on both cost and p95 wait: "
                      + (", ".join(beaten) if beaten else "none") + "\n")
    return buffer.getvalue()


def plot(results: dict[str, dict[str, Result]], path: Path) -> Path:
    """Cost ratio against p95 wait, one panel per trace (lower left is better)."""
    import matplotlib  # noqa: PLC0415 - plotting is optional at import time

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter  # noqa: PLC0415

    policies = list(dict.fromkeys(p for by_policy in results.values() for p in by_policy))
    colors = {p: plt.get_cmap("tab10")(i) for i, p in enumerate(policies)}
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4.4), squeeze=False)
    for ax, (trace, by_policy) in zip(axes[0], results.items(), strict=True):
        for policy, result in by_policy.items():
            f = result.figures()
            ax.scatter(f["p95_wait_boots"], f["cost_ratio"], color=colors[policy], label=policy,
                       marker="*" if policy == "project" else "o",
                       s=220 if policy == "project" else 60, zorder=3)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 1.25, 1.5, 2.0, 3.0, 5.0)))
        ax.yaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(trace)
        ax.set_xlabel("p95 wait (boot times)")
        ax.set_ylabel("cost ratio (billed slot-s / work s)")
        ax.grid(True, which="major", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ProjectController.min_warm_s = args.min_warm
    results = run_all(args.seed, args.quick, rate_hint=not args.no_rate_hint,
                      identical_boots=args.identical_boots)
    document = figures(results)
    stem = ("policy-quick" if args.quick else "policy") + ("-norate" if args.no_rate_hint else "")
    stem += "-sameboot" if args.identical_boots else ""
    stem += f"-minwarm{args.min_warm:g}" if args.min_warm is not None else ""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(document, indent=2) + "\n")
    if not args.no_plot:
        plot(results, args.out / f"{stem}.png")
    if args.json:
        sys.stdout.write(json.dumps(document) + "\n")
    else:
        sys.stdout.write(render_table(results))
        sys.stdout.write(f"written: {args.out / (stem + '.json')}"
                         + ("" if args.no_plot else f", {args.out / (stem + '.png')}") + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
