"""Policies on one dataset through ``zoomdet evaluate``, as rows of a results file.

    python benchmarks/policies.py --config configs/eval/hituav_fuse.yaml --data ../shared/data/hit-uav/test.json \\
        --dataset hituav-test --policy coarse --policy fine --policy greedy-entropy --results hituav_fuse

Runs ``zoomdet evaluate`` (resumable: a finished run in ``--out`` is reused) and
writes one row per policy × budget to ``benchmarks/results/<--results>.json``,
replacing ``--dataset``'s rows, with the command and the date; prints the
report's table. For configurations that need no trained agent or cache; the
agents have ``benchmarks/agents.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from zoomdet.eval.results import add_dataset_args, add_policy_args, require_fine

    add_dataset_args(ap)
    add_policy_args(ap)
    ap.add_argument("--results", required=True, help="name of the results file, benchmarks/results/<name>.json")
    ap.add_argument("--out", help="evaluation folder (default runs/bench/<results>/eval-<dataset>)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a field of --config (zoomdet evaluate --set), e.g. zoom.window_scale=1.0")
    args = ap.parse_args(argv)
    require_fine(ap, args.policy)
    if not args.results.replace("_", "").replace("-", "").isalnum():
        ap.error(f"--results is a file name (letters, digits, - and _), got {args.results!r}")

    from zoomdet.config import load_config
    from zoomdet.eval.evaluator import EvalConfig
    from zoomdet.eval.results import command_line, rows_from_report, run_zoomdet, write_results

    cfg = load_config(EvalConfig, args.config, args.set)
    out = Path(args.out or f"runs/bench/{args.results}/eval-{args.dataset}")
    argv_eval = ["evaluate", "--config", args.config, "--data", args.data, "--out", str(out),
                 "--images", str(args.images), "--no-progress", *[x for p in args.policy for x in ("--policy", p)]]
    if args.budget:
        argv_eval += ["--budget", *map(str, args.budget)]
    if args.rnet:
        argv_eval += ["--rnet", args.rnet]
    argv_eval += [x for kv in args.set for x in ("--set", kv)]
    run_zoomdet(argv_eval)
    report = json.loads((out / "report.json").read_text())
    rows = rows_from_report(report, args.dataset, seed=cfg.seed, command=command_line())
    path = write_results(args.results, rows, replace={"dataset": args.dataset})
    print((out / "report.md").read_text())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
