"""What one detector call costs: a fixed part per call and a part per pixel, fitted in one run.

    python benchmarks/call_cost.py --checkpoint zoomdet/assets/tiny_hituav.pt \\
        --data ../shared/data/hit-uav/test.json --dataset hituav-test --images 10 --proposal-density 3500 --proposal-min 300

Times ``Detector.detect`` (one window per call, the engine's path) on the first ``--images`` images of
``--data`` for each input shape: the whole image at each ``--scales`` and a top-left window of each
``--window-sides`` (fraction of the image side) at full resolution, after two untimed warm-up calls per
shape. Prints ms per call against megapixels of model input and the least-squares line
``ms = fixed + per_mpx * Mpx`` over the shapes, and writes one row per shape plus the fit to
``benchmarks/results/call_cost.json`` (replacing ``--dataset``'s rows).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def fit_line(x: list[float], y: list[float]) -> tuple[float, float]:
    """Least-squares ``(intercept, slope)`` of ``y = intercept + slope * x`` (at least two distinct ``x``)."""
    import numpy as np

    if len(set(x)) < 2:
        raise ValueError("a line needs at least two different input sizes")
    slope, intercept = np.polyfit(np.asarray(x, dtype=float), np.asarray(y, dtype=float), 1)
    return float(intercept), float(slope)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="detector checkpoint (zoomdet detector train)")
    ap.add_argument("--data", required=True, help="COCO annotation json")
    ap.add_argument("--dataset", required=True, help="dataset name in the results file")
    ap.add_argument("--images", type=int, default=10, help="images timed per shape (default 10)")
    ap.add_argument("--scales", type=float, nargs="+", default=[0.5, 0.75, 1.0], help="whole-image scales")
    ap.add_argument("--window-sides", type=float, nargs="+", default=[0.4, 0.55],
                    help="full-resolution windows, side as a fraction of the image side")
    ap.add_argument("--proposal-density", type=float, default=0.0, metavar="PER_MPX",
                    help="RPN proposals per megapixel (Detector.proposal_density; 0 = the model's fixed count)")
    ap.add_argument("--proposal-min", type=int, default=100, help="with a density, the fewest proposals per call")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    args = ap.parse_args(argv)
    if args.images < 1:
        ap.error("--images must be >= 1")
    if any(not 0 < s <= 1 for s in args.window_sides) or any(s <= 0 for s in args.scales):
        ap.error("--window-sides must be in (0, 1] and --scales > 0")

    import torch

    from zoomdet.data.coco import CocoDataset
    from zoomdet.detector.detector import Detector
    from zoomdet.eval.results import command_line, write_results
    from zoomdet.types import Window

    if args.threads:
        torch.set_num_threads(args.threads)
    det = Detector.from_checkpoint(args.checkpoint, proposal_density=args.proposal_density,
                                   proposal_min=args.proposal_min)
    ds = CocoDataset(args.data)
    ids = ds.image_ids[:args.images]
    images = [ds.load_image(i, keep_uint8=True) for i in ids]
    _, H, W = images[0].shape
    shapes = [(f"whole@{s:g}", Window.full(W, H, s)) for s in args.scales]
    shapes += [(f"window {f:g}@1", Window(0, 0, max(32, int(W * f)), max(32, int(H * f)), 1.0)) for f in args.window_sides]
    rows, date, cmd = [], datetime.date.today().isoformat(), command_line()
    print(f"{args.dataset}: {len(images)} images, {torch.get_num_threads()} threads, proposal_density "
          f"{args.proposal_density:g}/Mpx (0 = fixed)")
    print(f"{'shape':<16}{'input h x w':>12}{'Mpx':>8}{'proposals':>11}{'ms/call':>10}")
    for name, w in shapes:
        for im in images[:2]:
            det.detect(im, [w], features=False)
        t = time.perf_counter()
        for im in images:
            det.detect(im, [w], features=False)
        ms = (time.perf_counter() - t) / len(images) * 1000
        mpx = w.input_pixels / 1e6
        n = det.proposals_for(w.input_pixels)
        rows.append({"dataset": args.dataset, "images": len(images), "shape": name, "input_size": list(w.input_size),
                     "input_mpx": mpx, "proposals": n if n is not None else "fixed", "ms_per_call": ms,
                     "proposal_density": args.proposal_density, "proposal_min": args.proposal_min,
                     "threads": torch.get_num_threads(), "command": cmd, "date": date})
        print(f"{name:<16}{'x'.join(map(str, w.input_size)):>12}{mpx:8.3f}{str(n or 'fixed'):>11}{ms:10.1f}")
    fixed, per_mpx = fit_line([r["input_mpx"] for r in rows], [r["ms_per_call"] for r in rows])
    rows.append({"dataset": args.dataset, "images": len(images), "shape": "fit", "fixed_ms": fixed,
                 "ms_per_mpx": per_mpx, "proposal_density": args.proposal_density, "proposal_min": args.proposal_min,
                 "threads": torch.get_num_threads(), "command": cmd, "date": date})
    print(f"fit: {fixed:.1f} ms per call + {per_mpx:.0f} ms per megapixel of input")
    path = write_results("call_cost", rows, replace={"dataset": args.dataset},
                         required=("dataset", "images", "shape", "command", "date"))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
