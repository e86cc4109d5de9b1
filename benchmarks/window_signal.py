"""How much of the oracle's room can a state built from the coarse pass see?

    python benchmarks/window_signal.py --cache runs/bench/hituav-gpu-agent/cache-val \\
        --rnet runs/bench/hituav-gpu-agent/rnet.pt --dataset hituav-val-gpudet

The AP oracle beats every deployable policy by 1-6 AP points (``benchmarks/oracle.py``), yet no R-net or agent
takes that room. This script asks where the room is lost, on the first zoom step of every image of a rollout
cache. Each candidate window's label is the AP points it adds to its image when zoomed alone
(:func:`zoomdet.zoom.gain.window_ap_gains`, the ``reward: ap`` of the environment). Each state scores the
windows as greedy does (the window's sum on the state's gain map, :class:`zoomdet.zoom.windows.GainMap`,
divided by its pixels; no positive window means stop):

- ``entropy``: the binary entropy of the coarse scores (``greedy-entropy``);
- ``rnet:<name>``: each ``--rnet`` checkpoint's per-detection gains (``greedy``);
- ``fine-objects``: ground truth: each object's :func:`~zoomdet.zoom.gain.object_fine_gains` (its best fine
  score minus its best coarse score) spread over its box. A state that knew exactly which objects the fine
  pass finds better, but not what the merge then does to the image's AP.

For each it prints the mean within-image Spearman correlation of the window scores with the labels, and the
mean AP points of the window greedy would zoom first (``first_pick``), beside a random window (the mean label)
and the oracle's first pick (the best window, or stopping). ``share`` = (first_pick - random) / (oracle -
random): the part of the oracle's first-step room the state takes. Rows go to
``benchmarks/results/window_signal.json`` (replacing ``--dataset``'s rows).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def first_pick(scores: np.ndarray, pixels: np.ndarray, labels: np.ndarray) -> float:
    """The label of the window greedy zooms first: the highest score per pixel among windows of positive score;
    0 (greedy stops) when none is positive."""
    per_pixel = np.where(scores > 0, scores / pixels, -np.inf)
    k = int(np.argmax(per_pixel))
    return float(labels[k]) if np.isfinite(per_pixel[k]) else 0.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True, help="rollout cache folder (zoomdet cache build), e.g. a val cache")
    ap.add_argument("--dataset", required=True, help="name of the rows in the results file")
    ap.add_argument("--rnet", action="append", default=[], help="R-net checkpoint to score windows with (repeat)")
    ap.add_argument("--images", type=int, default=0, help="first N images of the cache (default 0 = all)")
    args = ap.parse_args(argv)

    from scipy.stats import spearmanr
    from tqdm import tqdm

    from zoomdet.eval.results import command_line, write_results
    from zoomdet.rnet.cache import RolloutCache
    from zoomdet.rnet.model import EntropyGain, RNetGain, window_ap_targets
    from zoomdet.zoom.gain import object_fine_gains
    from zoomdet.zoom.windows import GainMap, window_boxes

    try:
        cache = RolloutCache(args.cache)
        states = {"entropy": EntropyGain()}
        for path in args.rnet:  # an R-net of another detector is refused: its features mean something else
            states[f"rnet:{Path(path).stem}"] = RNetGain.from_checkpoint(path, expect_detector=cache.detector_id)
    except (FileNotFoundError, ValueError) as e:
        ap.error(str(e))
    names = [*states, "fine-objects"]
    spearman = {n: [] for n in names}
    picks = {n: [] for n in names}
    random_pick, oracle_pick = [], []
    n_images, k = 0, 0
    total = min(args.images, len(cache)) if args.images else len(cache)
    for rec in tqdm(itertools.islice(cache, total), desc="images", total=total):  # records load shard by shard
        k = rec.num_candidates
        labels = window_ap_targets(rec, cache.zoom.merge, candidates_only=True).numpy()
        if np.isnan(labels).all():  # no object: AP is undefined
            continue
        n_images += 1
        boxes = window_boxes(rec.windows[:k])
        pixels = np.array([w.source_pixels for w in rec.windows[:k]], dtype=np.float64)
        maps = {n: GainMap(rec.width, rec.height, rec.coarse.boxes, s.predict(rec.coarse)) for n, s in states.items()}
        maps["fine-objects"] = GainMap(rec.width, rec.height, rec.gt_boxes,
                                       object_fine_gains(rec.coarse, rec.fine[:k], rec.gt_boxes, rec.gt_labels))
        for n, gm in maps.items():
            scores = gm.window_sums(boxes)
            if np.ptp(scores) > 0 and np.ptp(labels) > 0:
                spearman[n].append(spearmanr(scores, labels).statistic)
            picks[n].append(first_pick(scores, pixels, labels))
        random_pick.append(float(labels.mean()))
        oracle_pick.append(max(float(labels.max()), 0.0))

    if not n_images:
        ap.error(f"{args.cache}: no image with objects (a window's AP gain is undefined without them)")
    rnd, orc = float(np.mean(random_pick)), float(np.mean(oracle_pick))
    common = {"dataset": args.dataset, "images": n_images, "windows_per_image": int(k), "random_pick": rnd,
              "oracle_pick": orc, "detector_id": cache.detector_id, "cache": args.cache,
              "command": command_line(), "date": __import__("datetime").date.today().isoformat()}
    rows = []
    print(f"{args.dataset}: {n_images} images with objects, {k} candidate windows each; AP points of the first "
          f"window zoomed (random {rnd:.2f}, oracle {orc:.2f})")
    print(f"{'state':<24}{'spearman':>10}{'first_pick':>12}{'share':>8}")
    for n in names:
        pick = float(np.mean(picks[n]))
        share = (pick - rnd) / (orc - rnd) if orc > rnd else float("nan")
        sp = float(np.mean(spearman[n])) if spearman[n] else float("nan")
        rows.append({**common, "state": n, "spearman": sp, "first_pick": pick, "share": share})
        print(f"{n:<24}{sp:10.3f}{pick:12.2f}{100 * share:7.1f}%")
    path = write_results("window_signal", rows, replace={"dataset": args.dataset},
                         required=("dataset", "images", "state", "command", "date"))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
