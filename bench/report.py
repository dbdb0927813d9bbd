"""Writes the latest benchmark figures into `docs/benchmarks.md` (`make bench` runs it last).

Reads what the benchmarks left in `bench/results/` and replaces the part of the document between
the `<!-- results:start -->` and `<!-- results:end -->` markers, so the prose around it stays.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def policy_table(figures: dict) -> list[str]:
    lines = ["### Pool policy (`bench/results/policy.json`)", "",
             "| trace | policy | cost ratio | p50 wait (boots) | p95 wait (boots) | makespan (s) |",
             "|---|---|---|---|---|---|"]
    for trace, policies in figures["traces"].items():
        for name, f in policies.items():
            lines.append(f"| {trace} | {name} | {f['cost_ratio']:.3f} | "
                         f"{f['p50_wait_boots']:.2f} | {f['p95_wait_boots']:.2f} | "
                         f"{f['makespan_s']:.0f} |")
    return [*lines, ""]


def spot_table(document: dict) -> list[str]:
    lines = ["### Spot members (`bench/results/spot.json`)", "",
             f"Spot price {document['spot_price']:g} x on-demand; every eviction rate above 0 "
             f"also has {document['bursts_per_h'] * 24:g} burst(s) a day that take half of the "
             "spot VMs and refuse spot starts for 30 minutes.", "",
             "| trace | evictions per spot VM-hour | pool | money ratio | money vs on-demand "
             "| p95 wait (boots) | spot share of billed | evictions |",
             "|---|---|---|---|---|---|---|---|"]
    for trace, by_rate in document["traces"].items():
        for rate, rows in by_rate.items():
            for name, r in rows.items():
                lines.append(f"| {trace} | {rate} | {name} | {r['money_ratio']:.3f} | "
                             f"{r['money_vs_on_demand']:.3f} | {r['p95_wait_boots']:.2f} | "
                             f"{100 * r['spot_share_of_billed']:.1f}% | {r['evictions']} |")
    return [*lines, ""]


def latency_table(figures: dict, title: str = "Control-plane throughput",
                  source: str = "latency.json") -> list[str]:
    raw = figures["raw"]
    lines = [f"### {title} (`bench/results/{source}`)", "",
             f"One warm VM with {figures['slots']} slots and a `cp` action; upload → processing "
             f"start of a lone file p50 {figures['upload_to_start_p50_s']} s, p95 "
             f"{figures['upload_to_start_p95_s']} s. Raw Azurite (median of "
             f"{len(figures['raw_samples'])} samples of {figures['raw_ops_per_sample']}): "
             f"{raw['blob_upload_per_s']} blob uploads/s, "
             f"{raw['queue_send_receive_delete_per_s']} queue send+receive+delete/s, "
             f"{raw['table_insert_read_per_s']} table insert+read/s.", "",
             "| files | dispatched files/s | completed files/s | dispatched ÷ raw uploads "
             "| storage requests/file (blob, queue, table) | CPU s/file (devhost, Azurite, agent) "
             "| activities/file | episodes/file |", "|---|---|---|---|---|---|---|---|"]
    for b in figures["batches"]:
        svc, cpu = b["requests_per_file_by_service"], b["cpu_s_per_file"]
        lines.append(
            f"| {b['files']} | {b['dispatched_files_per_s']} | {b['completed_files_per_s']} | "
            f"{b['dispatched_vs_raw_blob_upload']} | {b['requests_per_file']} ("
            f"{svc.get('blob', 0)}, {svc.get('queue', 0)}, {svc.get('table', 0)}) | "
            f"{cpu['total']} ({cpu['devhost']}, {cpu['azurite']}, {cpu['agent']}) | "
            f"{b['activities_per_file']} | {b['episodes_per_file']} |")
    return [*lines, ""]


def twin_table(document: dict) -> list[str]:
    scale = document["scale"]
    lines = ["### The app against its simulation (`bench/results/twin.json`)", "",
             f"Times divided by {scale['factor']:g} (boot {scale['boot_s']:g} s); "
             f"{scale['vms']} VMs x {scale['slots']} slots; waits in the twin's measured boot.",
             "",
             "| trace | files | side | cost ratio | p95 wait (boots) | p50 wait (boots) "
             "| billed VM-s | VM starts |", "|---|---|---|---|---|---|---|---|"]
    for trace, entry in document["traces"].items():
        for side in ("real", "sim", "sim_ideal_control_plane"):
            f = entry[side]
            lines.append(f"| {trace} | {entry['files']} | {side} | {f['cost_ratio']:.3f} | "
                         f"{f['p95_wait_boots']:.2f} | {f['p50_wait_boots']:.2f} | "
                         f"{f['billed_vm_s']:.1f} | {f['vm_starts']} |")
    lines += ["", "| burst (full size), dispatch rate (files/s) | p95 wait (boots) |", "|---|---|"]
    for rate, p95 in document["dispatch_rate_p95_wait_boots"].items():
        lines.append(f"| {rate} | {p95:.2f} |")
    return [*lines, ""]


def text_block(title: str, path: Path) -> list[str]:
    return [f"### {title} (`bench/results/{path.name}`)", "", "```",
            *path.read_text().strip().splitlines(), "```", ""]


def render() -> str:
    parts: list[str] = [START, "", "## Latest figures (written by `make bench`)", ""]
    if (RESULTS / "policy.json").exists():
        parts += policy_table(json.loads((RESULTS / "policy.json").read_text()))
    if (RESULTS / "spot.json").exists():
        parts += spot_table(json.loads((RESULTS / "spot.json").read_text()))
    if (RESULTS / "latency.json").exists():
        parts += latency_table(json.loads((RESULTS / "latency.json").read_text()))
    for name, title in (("latency_first_round.json",
                         "Control-plane throughput after the first round of hot-path work"),
                        ("latency_before.json",
                         "Control-plane throughput before the hot-path work")):
        if (RESULTS / name).exists():
            parts += latency_table(json.loads((RESULTS / name).read_text()), title, name)
    if (RESULTS / "twin.json").exists():
        parts += twin_table(json.loads((RESULTS / "twin.json").read_text()))
    for title, name in (("Agent throughput", "agent_throughput.txt"),
                        ("Durable replays, 1,000 activities", "durable_1000.txt"),
                        ("Durable replays, 10,000 activities", "durable_10000.txt")):
        if (RESULTS / name).exists():
            parts += text_block(title, RESULTS / name)
    return "\n".join([*parts, END])


def main() -> int:
    text = DOC.read_text()
    section = render()
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
