"""Print a results file's rows as the README's markdown table.

    python benchmarks/tables.py benchmarks/results/airbus.json --dataset airbus-test
    python benchmarks/tables.py benchmarks/results/sahi_peer.json --dataset airbus-test
    python benchmarks/tables.py benchmarks/results/latency.json --dataset hituav-test --stages
    python benchmarks/tables.py benchmarks/results/agents.json --dataset hituav-test --agents
    python benchmarks/tables.py benchmarks/results/ap_compare.json --margins hituav-test-gpudet

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
    ap.add_argument("--dataset", help="the rows of this dataset (required unless --margins is given)")
    ap.add_argument("--stages", action="store_true", help="latency rows: the detector setting and ms per stage")
    ap.add_argument("--agents", action="store_true", help="benchmarks/agents.py rows: each variant's mean ± std over "
                                                          "seeds per budget, and its margin over the best rule")
    ap.add_argument("--margins", metavar="PREFIX",
                    help="benchmarks/ap_compare.py rows: every agent's mean over seeds against greedy-entropy (and "
                         "greedy) at each budget, one line per dataset whose name starts with PREFIX, in the "
                         "file's order")
    args = ap.parse_args(argv)
    if args.margins is None and not args.dataset:
        ap.error("--dataset is required (or --margins PREFIX)")
    rows = json.loads(open(args.results).read())
    if args.margins is not None:
        return margin_table(rows, args.margins)
    rows = [r for r in rows if r["dataset"] == args.dataset]
    if not rows:
        print(f"no rows for {args.dataset}", file=sys.stderr)
        return 1
    print(f"{rows[0]['images']} images; `{rows[0]['command']}`, {rows[0]['date']}\n")
    if args.stages:
        return stage_table(rows)
    if args.agents:
        return agent_table(rows)
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
    """Rows of ``benchmarks/latency.py``: image dtype (rows written before it existed: float32), proposals setting, AP, pixels, ms per stage, ratios, policy overhead."""
    from zoomdet.detector.models import ONE_STAGE_MODELS  # rows of latency.py carry ``model`` since 2026-12-04

    print("| held as | proposals | policy | AP | AP_small | pixels_ratio | " + " | ".join(STAGES)
          + " | rel time | rel pixels | gain+policy+merge |")
    print("|---|---|---|---|---|---|" + "---|" * len(STAGES) + "---|---|---|")
    for r in rows:
        d = r.get("proposal_density") or 0
        setting = "fixed 1000" if not d else f"{d:g}/Mpx, ≥ {r.get('proposal_min', 100)}"
        if r.get("model") in ONE_STAGE_MODELS:  # no RPN: proposal settings do not apply
            setting = f"none ({r['model']})"
        if r.get("detector_settings"):  # the model's inference settings (latency.py --detector-set)
            setting += "; " + ", ".join(f"{k} {v}" for k, v in r["detector_settings"].items())
        name = r["policy"] + (f"@{r['budget']:g}" if r.get("budget") else "")
        t = r["timing_ms"]
        print(f"| {r.get('image_dtype', 'float32')} | {setting} | {name} | {fmt(r['ap'])} | {fmt(r['ap_small'])} | {r['pixels_ratio']:.3f} | "
              + " | ".join(f"{t[k]:.1f}" for k in STAGES)
              + f" | {fmt(r['rel_time'], True)} | {fmt(r['rel_pixels'], True)} | {fmt(r.get('overhead_share'), True)} |")
    return 0


def pct100(v) -> str:
    """AP as AP x 100 with two decimals; "–" where COCOeval had no object of that size (-1 or NaN)."""
    return "–" if v is None or v != v or v < 0 else f"{100 * v:.2f}"


def agent_table(rows: list[dict]) -> int:
    """Rows of ``benchmarks/agents.py``: policies and agent variants (mean ± population std over seeds) per budget."""
    from statistics import mean, pstdev

    groups: dict = {}
    for r in rows:
        groups.setdefault((r.get("variant") or r["policy"], r["budget"]), []).append(r)
    best = {b: max((100 * g[0]["ap"] for (n, bb), g in groups.items() if bb == b and n in ("greedy", "greedy-entropy")),
                   default=None) for _, b in groups}
    print("| policy | budget | seeds | AP × 100 | vs best rule | AP_small × 100 | pixels_ratio | zooms on | rel AP | rel time |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (name, b), g in sorted(groups.items(), key=lambda kv: (kv[0][1] or 0, kv[0][0])):
        aps = [100 * r["ap"] for r in g]
        ap = f"{mean(aps):.2f}" + (f" ± {pstdev(aps):.2f}" if len(g) > 1 else "")
        margin = f"{mean(aps) - best[b]:+.2f}" if best.get(b) is not None and name not in ("greedy", "greedy-entropy") else ""
        zoom = mean(r.get("zoomed_share") or 0 for r in g)
        rel_t = [r["rel_time"] for r in g if r.get("rel_time") is not None]
        print(f"| {name} | {'–' if b is None else f'{b:g}'} | {len(g)} | {ap} | {margin} | "
              f"{pct100(mean(r['ap_small'] for r in g))} | {mean(r['pixels_ratio'] for r in g):.3f} | "
              f"{100 * zoom:.0f}% | {fmt(mean(r['rel_ap'] for r in g), True)} | {fmt(mean(rel_t) if rel_t else None, True)} |")
    return 0


def margin_table(rows: list[dict], prefix: str) -> int:
    """Rows of ``benchmarks/ap_compare.py`` with ``greedy-entropy`` as the baseline: for each dataset starting with
    ``prefix`` and each agent there played with more than one seed (its ``(mean of N seeds)`` row), the mean's AP x 100
    minus ``greedy-entropy``'s at each budget, with its 95% bootstrap interval and, where the dataset has a
    ``greedy`` row at that budget, the margin over ``greedy`` in parentheses. Every agent experiment at a glance."""
    rows = [r for r in rows if r["dataset"].startswith(prefix) and r["baseline"] == "greedy-entropy"]
    lines: dict = {}
    for r in rows:
        if r["seeds"] > 1:
            lines.setdefault((r["dataset"], r["policy"].split(" (mean of")[0], r["seeds"]), {})[r["budget"]] = r
    if not lines:
        print(f"no agent rows of more than one seed against greedy-entropy in datasets starting with {prefix!r}",
              file=sys.stderr)
        return 1
    greedy = {(r["dataset"], r["budget"]): r["diff"] for r in rows if r["policy"] == "greedy"}
    budgets = sorted({b for cells in lines.values() for b in cells})
    print(f"AP x 100 against `greedy-entropy` (95% interval; against `greedy` in parentheses), mean over seeds, "
          f"{len(lines)} experiments\n")
    print("| dataset | agent | seeds | " + " | ".join(f"{b:g}" for b in budgets) + " |")
    print("|---|---|---|" + "---|" * len(budgets))
    for (dataset, agent, seeds), cells in lines.items():
        out = []
        for b in budgets:
            r = cells.get(b)
            if r is None:
                out.append("–")
                continue
            g = greedy.get((dataset, b))
            out.append(f"{r['diff']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
                       + ("" if g is None else f" ({r['diff'] - g:+.2f})"))
        print(f"| {dataset} | {agent} | {seeds} | " + " | ".join(out) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
