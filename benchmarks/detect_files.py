"""``zoomdet detect`` on the image files of a COCO split, scored afterwards, beside ``zoomdet evaluate``.

    python benchmarks/detect_files.py --config configs/eval/airbus_gpu.yaml \\
        --data ../shared/data/airbus-aircraft/test.json --dataset airbus-test-gpudet \\
        --policy fine --policy greedy-entropy --budget 0.25

For each policy, runs ``zoomdet detect`` on the split's image files as a user with unlabelled images would (one
command, files in, ``detections.jsonl`` out), then scores those answers with COCOeval against the split, and runs
``zoomdet evaluate`` on the same images with the same settings. Prints and writes one row per policy to
``benchmarks/results/detect_files.json`` (replacing ``--dataset``'s rows): AP, pixels, detector calls and seconds
per image of the ``detect`` answers, relative to ``fine``'s answers, and ``ap_evaluate`` / ``max_box_diff_px``:
the evaluator's AP and the largest coordinate difference between the two commands' boxes (0 when ``detect``
answers as the evaluator scores). ``--workers 0 2`` also runs ``detect`` through Ray tasks and records each
command's wall time (model loads and the Ray start included) and images per second.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from zoomdet.eval.results import add_dataset_args, add_policy_args, require_fine

    add_dataset_args(ap)
    add_policy_args(ap)
    ap.add_argument("--out", help="work folder (default runs/bench/detect_files/<dataset>)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0],
                    help="run zoomdet detect with each of these --workers (0: in-process; N: a local Ray instance of N "
                         "CPUs); one row per policy and value, with the command's wall time")
    args = ap.parse_args(argv)
    require_fine(ap, args.policy)
    if args.budget and len(args.budget) > 1:
        ap.error("give one --budget: zoomdet detect answers at one budget per run")

    import datetime as _dt

    import torch

    from zoomdet.config import load_config
    from zoomdet.data.coco import CocoDataset
    from zoomdet.eval.coco_eval import coco_metrics
    from zoomdet.eval.detect import read_answers
    from zoomdet.eval.evaluator import EvalConfig
    from zoomdet.eval.results import command_line, relative_to_fine, run_zoomdet, write_results
    from zoomdet.types import Detections

    out = Path(args.out or f"runs/bench/detect_files/{args.dataset}")
    cfg = load_config(EvalConfig, args.config, [])
    ds = CocoDataset(args.data, image_root=cfg.image_root)
    ids = ds.subset(args.images, cfg.seed)
    files = {str(ds.image_path(i).resolve()): i for i in ids}
    budget = args.budget[0] if args.budget else cfg.zoom.max_pixels_ratio
    common = ["--config", args.config, *(["--rnet", args.rnet] if args.rnet else [])]

    ev_out = out / "evaluate"
    shutil.rmtree(ev_out, ignore_errors=True)  # evaluated by this code, not resumed from a run of other code
    run_zoomdet(["evaluate", *common, "--data", args.data, "--out", str(ev_out), "--images", str(args.images),
                 "--no-progress", *[x for p in args.policy for x in ("--policy", p)], "--budget", str(budget)])
    report = json.loads((ev_out / "report.json").read_text())

    rows = []
    for name, workers in [(p, w) for p in args.policy for w in args.workers]:
        det_out = out / f"detect-{Path(name).stem if name.endswith('.zip') else name}-w{workers}"
        shutil.rmtree(det_out, ignore_errors=True)  # timed afresh, not resumed
        t0 = time.perf_counter()
        run_zoomdet(["detect", *files, *common, "--policy", name, "--budget", str(budget), "--score-threshold", "0",
                     "--out", str(det_out), "--no-progress", "--workers", str(workers)])
        wall = time.perf_counter() - t0
        header, answers = read_answers(det_out / "detections.jsonl")
        results = []
        for a in answers:
            d = a["detections"]
            results += Detections(torch.tensor([x["box_xyxy"] for x in d], dtype=torch.float32).reshape(-1, 4),
                                  torch.tensor([x["score"] for x in d]), torch.tensor([x["class_id"] for x in d])
                                  ).to_coco(files[a["file"]])
        m = coco_metrics(ds.coco, results, ids)
        sequential = header["policy"] not in ("fine", "coarse", "sahi")
        ev = next(r for r in report["policies"] if r["name"] == header["policy"]
                  and (r["budget"] == budget if sequential else True))
        rows.append({"dataset": args.dataset, "images": len(answers), "policy": header["policy"],
                     "budget": budget if sequential else None, "seed": cfg.seed, "ap": m["ap"], "ap50": m["ap50"],
                     "ap_small": m["ap_small"], "ap_medium": m["ap_medium"], "ap_large": m["ap_large"],
                     "pixels_ratio": sum(a["cost"]["pixels_ratio"] for a in answers) / len(answers),
                     "detector_calls_per_image": sum(a["cost"]["detector_calls"] for a in answers) / len(answers),
                     "time_per_image_s": sum(a["timing_ms"]["total"] for a in answers) / len(answers) / 1000,
                     "ap_evaluate": ev["ap"], "pixels_ratio_evaluate": ev["pixels_ratio"],
                     "max_box_diff_px": _max_box_diff(results, ev_out / ev["detections_file"]),
                     "workers": workers, "wall_s": wall, "images_per_s": len(answers) / wall,
                     "command": command_line(), "date": _dt.date.today().isoformat()})
    for w in args.workers:  # each against fine run the same way
        relative_to_fine([r for r in rows if r["workers"] == w], next(r for r in rows if r["policy"] == "fine"
                                                                      and r["workers"] == w))
    path = write_results("detect_files", rows, replace={"dataset": args.dataset})
    print(f"{'policy':<24} {'workers':>7} {'AP':>6} {'AP (evaluate)':>13} {'max box diff px':>15} {'pixels':>7} "
          f"{'calls':>6} {'s/img':>6} {'rel AP':>7} {'rel time':>8} {'wall s':>7} {'img/s':>6}")
    for r in rows:
        name = r["policy"] + (f"@{r['budget']:g}" if r["budget"] is not None else "")
        print(f"{name:<24} {r['workers']:>7} {r['ap']:>6.4f} {r['ap_evaluate']:>13.4f} {r['max_box_diff_px']:>15.3g} "
              f"{r['pixels_ratio']:>7.3f} {r['detector_calls_per_image']:>6.1f} {r['time_per_image_s']:>6.2f} "
              f"{r['rel_ap']:>7.1%} {r['rel_time']:>8.1%} {r['wall_s']:>7.1f} {r['images_per_s']:>6.2f}")
    print(f"wrote {path}")
    return 0


def _max_box_diff(results: list[dict], evaluate_file: Path) -> float:
    """Largest distance (px, the largest coordinate difference) from a box of either COCO results list to the
    nearest box of the same image and class in the other; inf when an image has another number of boxes. Both
    commands round to 0.01 px, from xyxy and from xywh, so equal answers differ by up to about 0.01."""
    from collections import defaultdict

    import torch

    def by_image(rs):
        d = defaultdict(list)
        for r in rs:
            d[r["image_id"]].append([r["category_id"] * 1e6, *r["bbox"]])  # another class: far away
        return d

    a, b = by_image(results), by_image(json.loads(evaluate_file.read_text()))
    worst = 0.0
    for k in set(a) | set(b):
        if len(a.get(k, [])) != len(b.get(k, [])):
            return float("inf")
        ta, tb = torch.tensor(a[k], dtype=torch.float64), torch.tensor(b[k], dtype=torch.float64)
        dist = (ta[:, None, :] - tb[None, :, :]).abs().amax(dim=2)  # L-inf, [Na, Nb]
        worst = max(worst, float(dist.amin(dim=1).max()), float(dist.amin(dim=0).max()))
    return worst


if __name__ == "__main__":
    sys.exit(main())
