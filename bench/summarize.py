"""Markdown summary of a benchmark run: each op's speed and its ratio to the alternatives.

Usage: `python bench/summarize.py results.json` on the file written by
`pytest bench/ --benchmark-only --benchmark-json results.json`; a run of bench/ also
prints the table at its end and writes it to the file named by LPLA_BENCH_SUMMARY.
"""

from __future__ import annotations

import json
import sys
from collections import OrderedDict

ALTERNATIVES = ("torch", "numpy", "faiss")


def records_from_json(path):
    """The per-benchmark records (group, impl, seconds, rows/s, GB/s) of a pytest-benchmark JSON file."""
    with open(path) as f:
        data = json.load(f)
    records = []
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        if "impl" in info:
            records.append(dict(info, group=bench["group"], seconds=bench["stats"]["min"]))
    return records


def markdown_table(records) -> str:
    """One row per benchmark group: ours (rows/s, GB/s, share of read bandwidth) and t_alt / t_ours."""
    groups = OrderedDict()
    for rec in records:
        groups.setdefault(rec["group"], {})[rec["impl"]] = rec
    bandwidth = next((r["gb_per_s"] for r in records if r["impl"] == "x.sum()"), None)
    lines = [
        f"Read bandwidth (x.sum() on the same fp32 tensor): {bandwidth:.1f} GB/s" if bandwidth else "",
        "",
        "| op | ours rows/s | ours GB/s | % of read bandwidth | vs torch | vs numpy | vs faiss |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for group, impls in groups.items():
        ours = impls.get("ours")
        if ours is None:
            continue
        ratios = []
        for alt in ALTERNATIVES:
            other = impls.get(alt)
            ratios.append(f"{other['seconds'] / ours['seconds']:.1f}x" if other else "-")
        share = f"{100 * ours['bandwidth_ratio']:.0f}%" if ours.get("bandwidth_ratio") else "-"
        lines.append(
            f"| {group} | {_rate(ours['rows_per_s'])} | {ours['gb_per_s']:.1f} | {share} | " + " | ".join(ratios) + " |"
        )
    fp32 = groups.get("lp_norm fp32 p=2", {}).get("ours")
    half_lines = []
    for dtype in ("fp16", "bf16"):
        for p in ("2", "3"):
            base = groups.get(f"lp_norm fp32 p={p}", {}).get("ours")
            half = groups.get(f"lp_norm {dtype} p={p}", {}).get("ours")
            if base and half:
                half_lines.append(f"- {dtype} p={p}: {half['rows_per_s'] / base['rows_per_s']:.2f}x the fp32 rows/s")
    if fp32 and half_lines:
        lines += ["", "Half-precision input, rows/s relative to fp32:"] + half_lines
    lines += ["", "Ratios are t(alternative) / t(ours), best of the rounds: above 1 means ours is faster."]
    return "\n".join(lines).strip() + "\n"


def _rate(per_second: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if per_second >= scale:
            return f"{per_second / scale:.3g} {suffix}"
    return f"{per_second:.3g}"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python bench/summarize.py RESULTS.json")
    print(markdown_table(records_from_json(sys.argv[1])), end="")
