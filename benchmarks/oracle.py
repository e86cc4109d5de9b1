"""Is the oracle an upper bound? Deployable policies against the gain oracle and the AP oracle.

    python benchmarks/oracle.py --config configs/eval/synth.yaml --data data/synth-val/annotations.json \\
        --dataset synth-val --images 20 --rnet runs/quickstart/rnet.pt --budget 0.35 0.45 0.6

Runs ``zoomdet evaluate`` with ``coarse``, ``fine``, ``greedy-entropy`` (and
``greedy`` with ``--rnet``), ``oracle`` (the paper's gain, Eq. 1-2, with
look-ahead) and ``oracle-ap`` (each step takes the window that most raises
the image's COCO AP, with look-ahead) on the same images. Prints, per budget,
the best deployable policy's AP and each oracle's margin over it (AP x 100),
and writes the rows to ``benchmarks/results/oracle.json`` (replacing
``--dataset``'s rows).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEPLOYABLE = ("greedy", "greedy-entropy")
ORACLES = ("oracle", "oracle-ap")


def main(argv=None) -> int:
    from zoomdet.eval.results import add_dataset_args, command_line, rows_from_report, run_zoomdet, write_results

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_args(ap)
    ap.add_argument("--budget", type=float, nargs="+", required=True, help="budgets (max_pixels_ratio)")
    ap.add_argument("--rnet", help="R-net checkpoint: adds greedy")
    ap.add_argument("--out", help="evaluate's folder (default runs/bench/oracle/<dataset>; reruns resume there)")
    args = ap.parse_args(argv)

    out = Path(args.out or f"runs/bench/oracle/{args.dataset}")
    policies = ["coarse", "fine", "greedy-entropy", *ORACLES] + (["greedy"] if args.rnet else [])
    argv_eval = ["evaluate", "--config", args.config, "--data", args.data, "--out", str(out), "--images", str(args.images),
                 "--budget", *map(str, args.budget)] + (["--rnet", args.rnet] if args.rnet else [])
    for p in policies:
        argv_eval += ["--policy", p]
    run_zoomdet(argv_eval)
    report = json.loads((out / "report.json").read_text())
    rows = rows_from_report(report, args.dataset, command=command_line())
    by = {(r["policy"], r["budget"]): r for r in rows}
    print(f"\n{args.dataset}, {report['images']} images: AP x 100 per budget")
    print(f"{'budget':>7} {'best deployable':>24} {'oracle':>16} {'oracle-ap':>16}")
    for b in args.budget:
        dep = [by[(p, b)] for p in DEPLOYABLE if (p, b) in by]
        best = max(dep, key=lambda r: r["ap"])
        cells = [f"{100 * by[(o, b)]['ap']:6.2f} ({100 * (by[(o, b)]['ap'] - best['ap']):+5.2f})" for o in ORACLES]
        print(f"{b:7.2f} {best['policy'] + ' ' + format(100 * best['ap'], '.2f'):>24} {cells[0]:>16} {cells[1]:>16}")
    path = write_results("oracle", rows, replace={"dataset": args.dataset})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
