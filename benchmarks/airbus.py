"""ZoomDet on real high-resolution imagery: the Airbus aircraft set (2560×2560 satellite extracts).

    python benchmarks/airbus.py                 # all stages; each reuses its finished output
    python benchmarks/airbus.py --images 5      # a quick look on 5 test images

Stages, through the documented CLI (``zoomdet.cli.main``), data from
``../shared/data/airbus-aircraft`` (``--root``):

1. ``detector``: ``zoomdet detector eval`` of the checkpoint in
   ``configs/eval/airbus.yaml`` on the test split at scales 1.0, 0.5 and 0.25:
   the coarse-vs-fine gap by object size;
2. ``cache``: ``zoomdet cache build --fine composed`` of the train and val
   splits (one full-resolution pass per image);
3. ``rnet``: ``zoomdet rnet train`` on them;
4. ``evaluate``: ``zoomdet evaluate`` on the test split, coarse / fine /
   random / greedy / greedy-entropy / oracle at the config's budgets
   (0.1–0.5).

Prints the table; writes ``benchmarks/results/airbus.json`` (one row per
policy × budget, plus ``detector@<scale>`` rows for stage 1) and copies the
AP-vs-pixels plot to ``docs/pareto_airbus.png``. The real SAHI package runs
separately: ``python benchmarks/sahi_peer.py --config configs/eval/airbus.yaml
--data ../shared/data/airbus-aircraft/test.json --dataset airbus-test``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

POLICIES = ["coarse", "fine", "random", "greedy", "greedy-entropy", "oracle"]  # sahi: benchmarks/sahi_peer.py, beside the real package


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="../shared/data/airbus-aircraft", help="dataset folder")
    ap.add_argument("--config", default="configs/eval/airbus.yaml")
    ap.add_argument("--images", type=int, default=0, help="test images (default 0 = all 20)")
    ap.add_argument("--dataset", default="airbus-test",
                    help="the rows' dataset name (default airbus-test; -<images> is added with --images); the plot "
                         "goes to docs/pareto_airbus.png for airbus-test, else docs/pareto_<dataset>.png")
    ap.add_argument("--out", help="working folder (default runs/bench/airbus-<digest of the config's zoom section>-"
                                   "<digest of its checkpoint>, so a changed zoom config or detector never reuses "
                                   "caches, an R-net or a detector evaluation made for another)")
    ap.add_argument("--workers", type=int, default=None, help="Ray workers for the caches (default: CPU count)")
    ap.add_argument("--train-images", type=int, default=0, help="images per cache split (default 0 = all)")
    ap.add_argument("--policy", action="append", help=f"policies of stage 4, repeatable (default: {' '.join(POLICIES)}); "
                                                      "without greedy, stages 2-3 (caches, R-net) are skipped")
    args = ap.parse_args(argv)
    policies = args.policy or POLICIES

    from zoomdet.config import load_config
    from zoomdet.eval.evaluator import EvalConfig
    from zoomdet.eval.results import command_line, detector_scale_rows, rows_from_report, run_zoomdet, write_results

    from zoomdet.detector.detector import file_digest
    from zoomdet.rnet.cache import zoom_digest

    cfg = load_config(EvalConfig, args.config)
    root = Path(args.root)
    out = Path(args.out or f"runs/bench/airbus-{zoom_digest(cfg.zoom)}-{file_digest(cfg.checkpoint)[:8]}")
    out.mkdir(parents=True, exist_ok=True)
    dataset = args.dataset if not args.images else f"{args.dataset}-{args.images}"
    command, today = command_line(), _dt.date.today().isoformat()

    # 1. the detector at three scales
    det_json = out / "detector_eval.json"
    if not det_json.is_file():
        run_zoomdet(["detector", "eval", "--checkpoint", cfg.checkpoint, "--data", str(root / "test.json"),
              "--scales", "1.0", "0.5", "0.25", "--out", str(det_json)])
    rows = detector_scale_rows(json.loads(det_json.read_text()), dataset, command, today)

    # 2-3. composed caches and the R-net
    rnet = out / "rnet.pt"
    if "greedy" in policies and not rnet.is_file():
        for split in ("train", "val"):
            cache_args = ["cache", "build", "--config", args.config, "--data", str(root / f"{split}.json"),
                          "--out", str(out / f"cache-{split}"), "--fine", "composed", "--images", str(args.train_images)]
            run_zoomdet(cache_args + ([] if args.workers is None else ["--workers", str(args.workers)]))
        run_zoomdet(["rnet", "train", "--cache", str(out / "cache-train"), "--val-cache", str(out / "cache-val"),
              "--out", str(rnet)])

    # 4. every policy on the test split
    ev = out / f"eval-{dataset}"
    argv_eval = ["evaluate", "--config", args.config, "--data", str(root / "test.json"),
                 "--out", str(ev), "--images", str(args.images)] + (["--rnet", str(rnet)] if "greedy" in policies else [])
    for p in policies:
        argv_eval += ["--policy", p]
    run_zoomdet(argv_eval)
    report = json.loads((ev / "report.json").read_text())
    rows += rows_from_report(report, dataset, seed=cfg.seed, command=command)
    path = write_results("airbus", rows, replace={"dataset": dataset})
    if not args.images:
        (REPO / "docs").mkdir(exist_ok=True)
        plot = "pareto_airbus.png" if dataset == "airbus-test" else f"pareto_{dataset}.png"
        shutil.copy(ev / "pareto.png", REPO / "docs" / plot)
    print("detector on test, whole image (AP / AP_medium / AP_large):")
    for r in (r for r in rows if r["policy"].startswith("detector@")):
        print(f"  {r['policy']}: {r['ap']:.3f} / {r['ap_medium']:.3f} / {r['ap_large']:.3f}")
    print((ev / "report.md").read_text())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
