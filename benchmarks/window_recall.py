"""Do the zoomed windows see what the whole image sees at the same scale? Recall inside the chosen windows.

    python benchmarks/window_recall.py --config configs/eval/hituav_gpu_fuse_small.yaml \\
        --data ../shared/data/hit-uav/val.json --dataset hituav-val-gpudet-g456 --budget 0.4

Runs a policy (default ``greedy-entropy``) at one budget through the zoom engine and takes the objects whose whole
box lies inside one of its chosen windows, at least ``--margin`` pixels from the window's edges (so no window
cuts them). For each class it counts how many of them are found (a box of the class at IoU ≥ ``--iou`` with a
score ≥ ``--score``) by:

- ``crops``: the windows themselves, each crop at the config's ``window_scale`` (what the engine merges);
- ``frame_at_window_scale``: the whole image at ``window_scale`` (the same resolution, with the whole frame around);
- ``fine``: the whole image at ``fine_scale`` (the reference pass);
- ``coarse``: the coarse pass.

Where ``crops`` is below ``frame_at_window_scale`` the windows lose objects for want of what lies around them (a
small input, its borders), not for want of resolution; where it is level and below ``fine``, the window scale
is what costs them. Writes one row per class (and one for all classes) to
``benchmarks/results/window_recall.json``, replacing ``--dataset``'s rows, with the command and the date.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SOURCES = ("crops", "frame_at_window_scale", "fine", "coarse")


def found(det, gt_boxes, gt_labels, score: float, iou: float):
    """``Tensor[G]`` bool: each ground-truth box (xyxy, pixels) has a detection of its class at IoU ≥ ``iou`` with a
    score ≥ ``score``."""
    import torch
    from torchvision.ops import box_iou

    keep = det.scores >= score
    if len(gt_boxes) == 0 or not bool(keep.any()):
        return torch.zeros(len(gt_boxes), dtype=torch.bool)
    overlap = box_iou(gt_boxes, det.boxes[keep]) * (gt_labels[:, None] == det.labels[keep][None, :])
    return (overlap >= iou).any(dim=1)


def inside_windows(gt_boxes, windows, margin: float):
    """``Tensor[G]`` bool: the whole box (xyxy, full-image pixels) lies inside one of ``windows`` with ``margin``
    pixels to spare on every side."""
    import torch

    if len(gt_boxes) == 0 or not windows:
        return torch.zeros(len(gt_boxes), dtype=torch.bool)
    w = torch.stack([win.box() for win in windows])
    return ((gt_boxes[:, None, 0] >= w[None, :, 0] + margin) & (gt_boxes[:, None, 1] >= w[None, :, 1] + margin)
            & (gt_boxes[:, None, 2] <= w[None, :, 2] - margin) & (gt_boxes[:, None, 3] <= w[None, :, 3] - margin)).any(1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="eval config (configs/eval/*.yaml)")
    ap.add_argument("--data", required=True, help="COCO annotation json")
    ap.add_argument("--dataset", required=True, help="name of the rows in the results file")
    ap.add_argument("--policy", default="greedy-entropy", help="the policy that chooses the windows (default "
                    "greedy-entropy; greedy needs --rnet)")
    ap.add_argument("--rnet", help="R-net checkpoint for --policy greedy")
    ap.add_argument("--budget", type=float, required=True, help="max_pixels_ratio of the policy's run")
    ap.add_argument("--images", type=int, default=0, help="N images, a seeded sample (default 0 = all)")
    ap.add_argument("--score", type=float, default=0.3, help="lowest score of a detection that counts (default 0.3)")
    ap.add_argument("--iou", type=float, default=0.5, help="IoU at which a detection finds an object (default 0.5)")
    ap.add_argument("--margin", type=float, default=8.0,
                    help="an object counts when its box is at least this many pixels inside a window (default 8)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field of --config")
    ap.add_argument("--results", default="window_recall", help="results file name under benchmarks/results")
    args = ap.parse_args(argv)
    if not args.budget > 0:
        ap.error(f"--budget must be > 0, got {args.budget}")
    if not 0 <= args.score <= 1 or not 0 < args.iou <= 1 or args.margin < 0:
        ap.error("--score must be in [0, 1], --iou in (0, 1] and --margin >= 0")

    import torch
    from tqdm import tqdm

    from zoomdet.config import load_config
    from zoomdet.data.coco import CocoDataset
    from zoomdet.eval.evaluator import EvalConfig, load_detector
    from zoomdet.eval.results import command_line, write_results
    from zoomdet.types import Detections, Window
    from zoomdet.zoom.engine import GroundTruth, ZoomEngine
    from zoomdet.zoom.policies import make_policy

    overrides = list(args.set) + ([f"policies.rnet={args.rnet}"] if args.rnet else [])
    cfg = load_config(EvalConfig, args.config, overrides)
    ds = CocoDataset(args.data, image_root=cfg.image_root)
    detector = load_detector(cfg)
    engine = ZoomEngine(detector, cfg.zoom)
    policy = make_policy(args.policy, cfg.policies, cfg.zoom, detector.detector_id)
    ids = ds.subset(args.images or cfg.images, cfg.seed)
    counts: dict[int, dict[str, int]] = {}
    for iid in tqdm(ids, desc="window recall", unit="img"):
        image = ds.load_image(iid, keep_uint8=cfg.keep_uint8)
        _, height, width = image.shape
        boxes, labels, crowd = ds.targets(iid)
        res = engine.run(image, policy, ground_truth=GroundTruth(boxes, labels, crowd), seed=cfg.seed + iid,
                         max_pixels_ratio=args.budget)
        windows = [r.window for r in res.regions]
        inside = inside_windows(boxes, windows, args.margin) & ~crowd
        if not bool(inside.any()):
            continue
        frame_w, frame_f = engine.detect_windows(image, [Window.full(width, height, cfg.zoom.zoom_scale),
                                                         Window.full(width, height, cfg.zoom.fine_scale)])
        crops = Detections.cat([d.without_features() for d in res.fine]) if res.fine else Detections.empty()
        hits = {name: found(d, boxes, labels, args.score, args.iou)
                for name, d in zip(SOURCES, (crops, frame_w, frame_f, res.coarse))}
        for c in labels[inside].unique().tolist():
            m = inside & (labels == c)
            row = counts.setdefault(int(c), {"objects": 0, **{s: 0 for s in SOURCES}})
            row["objects"] += int(m.sum())
            for s in SOURCES:
                row[s] += int((hits[s] & m).sum())
    if not counts:
        raise SystemExit(f"no object lies {args.margin:g} px inside a window the policy chose on these images")

    total = {"objects": sum(r["objects"] for r in counts.values()),
             **{s: sum(r[s] for r in counts.values()) for s in SOURCES}}
    date, command = _dt.date.today().isoformat(), command_line()
    rows = []
    for c, r in [*sorted(counts.items()), (None, total)]:
        rows.append({"dataset": args.dataset, "images": len(ids), "policy": args.policy, "budget": args.budget,
                     "class": "all" if c is None else ds.categories.get(c, str(c)), "objects": r["objects"],
                     "window_scale": cfg.zoom.zoom_scale, "fine_scale": cfg.zoom.fine_scale,
                     "score": args.score, "iou": args.iou, "margin": args.margin,
                     **{f"recall_{s}": r[s] / r["objects"] for s in SOURCES}, "command": command, "date": date})
    print(f"{args.dataset}: {len(ids)} images, {args.policy}@{args.budget:g}; objects at least {args.margin:g} px "
          f"inside a chosen window, found at IoU {args.iou:g} with a score >= {args.score:g}")
    print(f"{'class':16s} {'objects':>7s} " + " ".join(f"{s:>22s}" for s in SOURCES))
    for r in rows:
        print(f"{r['class']:16s} {r['objects']:7d} " + " ".join(f"{r['recall_' + s]:22.3f}" for s in SOURCES))
    out = write_results(args.results, rows, replace={"dataset": args.dataset},
                        required=("dataset", "images", "policy", "budget", "class", "objects", "command", "date"))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
