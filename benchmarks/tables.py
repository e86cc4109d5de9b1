"""Print a results file's rows as the README's markdown table.

    python benchmarks/tables.py benchmarks/results/airbus.json --dataset airbus-test
    python benchmarks/tables.py benchmarks/results/sahi_peer.json --dataset airbus-test
    python benchmarks/tables.py benchmarks/results/latency.json --dataset hituav-test --stages

The README's tables are pasted from this output, so they are the files' numbers.
"""

from __future__ import annotations

import argparse
import json
import sys


def fmt(v, pct: bool = False) -> str:
    if v is None or v != v:
        return "–"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--stages", action="store_true", help="latency rows: the detector setting and ms per stage")
    args = ap.parse_args(argv)
    rows = [r for r in json.loads(open(args.results).read()) if r["dataset"] == args.dataset]
    if not rows:
        print(f"no rows for {args.dataset}", file=sys.stderr)
        return 1
    print(f"{rows[0]['images']} images; `{rows[0]['command']}`, {rows[0]['date']}\n")
    if args.stages:
        return stage_table(rows)
    print("| policy | AP | AP50 | AP_medium | AP_large | pixels_ratio | calls / image | s / image | rel AP | rel pixels | rel time |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        name = r["policy"] + (f" {r['setting']}" if r.get("setting") else "") + (f"@{r['budget']:g}" if r.get("budget") else "")
        calls = r.get("detector_calls_per_image")
        sec = r.get("time_per_image_s")
        print(f"| {name} | {fmt(r['ap'])} | {fmt(r.get('ap50'))} | {fmt(r.get('ap_medium'))} | {fmt(r.get('ap_large'))} | "
              f"{r['pixels_ratio']:.3f} | {'–' if calls is None else f'{calls:.1f}'} | {'–' if sec is None else f'{sec:.2f}'} | "
              f"{fmt(r['rel_ap'], True)} | {fmt(r['rel_pixels'], True)} | {fmt(r['rel_time'], True)} |")
    return 0


STAGES = ("decode", "coarse", "gain", "policy", "fine", "merge", "total")


def stage_table(rows: list[dict]) -> int:
    """Rows of ``benchmarks/latency.py``: proposals setting, AP, pixels, ms per stage, ratios, policy overhead."""
    print("| proposals | policy | AP | AP_small | pixels_ratio | " + " | ".join(STAGES)
          + " | rel time | rel pixels | gain+policy+merge |")
    print("|---|---|---|---|---|" + "---|" * len(STAGES) + "---|---|---|")
    for r in rows:
        d = r.get("proposal_density") or 0
        setting = "fixed 1000" if not d else f"{d:g}/Mpx, ≥ {r.get('proposal_min', 100)}"
        name = r["policy"] + (f"@{r['budget']:g}" if r.get("budget") else "")
        t = r["timing_ms"]
        print(f"| {setting} | {name} | {fmt(r['ap'])} | {fmt(r['ap_small'])} | {r['pixels_ratio']:.3f} | "
              + " | ".join(f"{t[k]:.1f}" for k in STAGES)
              + f" | {fmt(r['rel_time'], True)} | {fmt(r['rel_pixels'], True)} | {fmt(r.get('overhead_share'), True)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
