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

With ``--fit-cache`` (a training cache of the same detector and windows) it also fits window scorers to the
labels there and scores them like the states above, to ask whether more of the coarse pass than its detections
says where zooming pays:

- ``fit:summaries``: ridge regression on what the states above see of a window: its share of the image, its
  ``entropy`` and R-net sums per pixel (every ``--rnet``), and how many coarse detections it holds;
- ``fit:dense`` (with ``--dense``): the same plus the coarse pass's own FPN features pooled over the window
  (:func:`dense_window_features`: RoIAlign of each level, mean and max over 4x4 bins, 2 x 4 x C numbers), which
  see what the detector saw below its score threshold. This runs the cache's detector on each image's coarse
  view, so the images must be where the cache's data file says.

The ridge penalty is chosen by 5-fold cross-validation over the fit cache's images (the best mean first pick).

With ``--miss PATH`` (a head trained by ``benchmarks/miss_map.py`` on the cache's detector) it also scores:

- ``miss``: the predicted probability mass of objects the coarse pass missed inside the window, a dense map
  from the coarse pass's FPN features (it runs the detector on each image's coarse view, like ``--dense``);
- ``entropy+miss@B``: the rule's entropy per pixel plus B times the miss mass per pixel, each divided by its
  largest value over the image's windows, for each B of ``--miss-beta``.

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
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))  # miss_map


def first_pick(scores: np.ndarray, pixels: np.ndarray, labels: np.ndarray) -> float:
    """The label of the window greedy zooms first: the highest score per pixel among windows of positive score;
    0 (greedy stops) when none is positive."""
    per_pixel = np.where(scores > 0, scores / pixels, -np.inf)
    k = int(np.argmax(per_pixel))
    return float(labels[k]) if np.isfinite(per_pixel[k]) else 0.0


def fit_ridge(xs: list[np.ndarray], ys: list[np.ndarray], pixels: list[np.ndarray],
              alphas=(1.0, 10.0, 100.0, 1e3, 1e4, 1e5), folds: int = 5, seed: int = 0):
    """Ridge regression of window labels on window features, its penalty chosen by ``folds``-fold
    cross-validation over images (the mean :func:`first_pick` of the held-out images).

    Args:
        xs: per image, ``float[K, D]`` window features; ys: per image, ``float[K]`` labels (AP points);
        pixels: per image, ``float[K]`` the windows' source pixels.

    Returns:
        ``(predict, alpha)``: ``predict(float[K, D]) -> float[K]`` fitted on every image, and the chosen penalty.
    """
    if len(xs) < folds:
        raise ValueError(f"{len(xs)} images to fit on; need at least {folds}")

    def fit(idx, alpha):
        X = np.concatenate([xs[i] for i in idx]).astype(np.float64)
        y = np.concatenate([ys[i] for i in idx]).astype(np.float64)
        mu, sd = X.mean(0), X.std(0) + 1e-6
        Z = (X - mu) / sd
        w = np.linalg.solve(Z.T @ Z + alpha * np.eye(Z.shape[1]), Z.T @ (y - y.mean()))
        return lambda Xn: ((np.asarray(Xn, np.float64) - mu) / sd) @ w + y.mean()

    order = np.random.default_rng(seed).permutation(len(xs))
    parts = np.array_split(order, folds)
    cv = {}
    for alpha in alphas:
        picks = []
        for k, held in enumerate(parts):
            predict = fit(np.concatenate([p for j, p in enumerate(parts) if j != k]), alpha)
            picks += [first_pick(predict(xs[i]), pixels[i], ys[i]) for i in held]
        cv[alpha] = float(np.mean(picks))
    best = max(alphas, key=lambda a: cv[a])
    return fit(np.arange(len(xs)), best), best


@torch.inference_mode()
def dense_window_features(detector, image, windows, coarse_scale: float) -> np.ndarray:
    """``float32[K, 2 * L * C]``: the coarse pass's FPN features pooled over each window (R-CNN detectors).

    ``image``: ``Tensor[3, H, W]`` as :meth:`~zoomdet.detector.detector.Detector.detect` takes it; ``windows``:
    the K windows (source pixels). The coarse view is cut as the engine cuts it (the whole image at
    ``coarse_scale``); for each of the L FPN levels with C channels (torchvision's ``"pool"`` level left out),
    ``torchvision.ops.roi_align`` over the window's box in that level's coordinates, 4x4 bins, then the mean
    and the max over the bins."""
    from torchvision.ops import roi_align

    from zoomdet.detector.detector import as_float_image, crop_window
    from zoomdet.types import Window
    from zoomdet.zoom.windows import window_boxes

    m = detector.model
    if not hasattr(m, "backbone") or not hasattr(m, "transform"):
        raise ValueError("dense window features need a torchvision detector with a backbone (an R-CNN)")
    _, H, W = image.shape
    crop = as_float_image(crop_window(image, Window.full(W, H, coarse_scale)))
    images, _ = m.transform([crop.to(detector.device)])
    feats = m.backbone(images.tensors)
    boxes = torch.from_numpy(window_boxes(windows)).float() * coarse_scale  # model-input pixels
    rois = torch.cat([torch.zeros(len(boxes), 1), boxes], 1).to(detector.device)
    parts = []
    for name, f in feats.items():
        if name == "pool":
            continue
        r = roi_align(f, rois, output_size=4, spatial_scale=f.shape[-2] / images.tensors.shape[-2],
                      sampling_ratio=2, aligned=True)
        parts += [r.mean((2, 3)), r.amax((2, 3))]
    return torch.cat(parts, 1).float().cpu().numpy()


def window_summaries(rec, boxes: np.ndarray, pixels: np.ndarray, state_sums: dict) -> np.ndarray:
    """``float[K, 2 + len(state_sums)]``: each window's share of the image, each state's window sum
    (``state_sums``, as :func:`cache_windows` computes them) per 10,000 pixels, and the number of coarse
    detections it holds (a box's count spread over its area)."""
    from zoomdet.zoom.windows import GainMap

    ones = torch.ones(len(rec.coarse.boxes))
    count = GainMap(rec.width, rec.height, rec.coarse.boxes, ones).window_sums(boxes)
    return np.stack([pixels / (rec.width * rec.height), *(s / pixels * 1e4 for s in state_sums.values()), count], 1)


class CacheImages:
    """The decoded image of each record of a rollout cache, from the data file(s) its manifest names
    (``uint8``, as inference reads them). Records of augmented views have no image of their own: refused."""

    def __init__(self, cache) -> None:
        from zoomdet.data.coco import CocoDataset

        if cache.manifest.get("augment"):
            raise ValueError(f"{cache.root}: a cache of augmented views; dense features need the images as they are")
        data = cache.manifest["data"]
        self.datasets = [CocoDataset(d) for d in (data if isinstance(data, list) else [data])]

    def __call__(self, image_id: int):
        for ds in self.datasets:
            if image_id in ds.coco.imgs:
                return ds.load_image(image_id, keep_uint8=True)
        raise ValueError(f"image id {image_id} is in none of the cache's data files")


def cache_windows(cache, states: dict, total: int, detector=None, images: "CacheImages | None" = None,
                  desc: str = "images"):
    """Per image of ``cache`` with objects (the first ``total`` records): ``(rec, labels, boxes, pixels,
    state_sums, features)`` of its K candidate windows. ``state_sums``: each state's gain map summed over each
    window (what greedy ranks by); ``features``: ``summaries`` (:func:`window_summaries`) and, with a
    ``detector`` and the cache's ``images``, ``dense`` (those plus :func:`dense_window_features`)."""
    from tqdm import tqdm

    from zoomdet.rnet.model import window_ap_targets
    from zoomdet.zoom.windows import GainMap, window_boxes

    for rec in tqdm(itertools.islice(cache, total), desc=desc, total=total):  # records load shard by shard
        k = rec.num_candidates
        labels = window_ap_targets(rec, cache.zoom.merge, candidates_only=True).numpy()
        if np.isnan(labels).all():  # no object: AP is undefined
            continue
        boxes = window_boxes(rec.windows[:k])
        pixels = np.array([w.source_pixels for w in rec.windows[:k]], dtype=np.float64)
        sums = {n: GainMap(rec.width, rec.height, rec.coarse.boxes, s.predict(rec.coarse)).window_sums(boxes)
                for n, s in states.items()}
        features = {"summaries": window_summaries(rec, boxes, pixels, sums)}
        if detector is not None:
            features["dense"] = np.concatenate([features["summaries"], dense_window_features(
                detector, images(rec.image_id), rec.windows[:k], cache.zoom.coarse_scale)], 1)
        yield rec, labels, boxes, pixels, sums, features


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True, help="rollout cache folder (zoomdet cache build), e.g. a val cache")
    ap.add_argument("--dataset", required=True, help="name of the rows in the results file")
    ap.add_argument("--rnet", action="append", default=[], help="R-net checkpoint to score windows with (repeat)")
    ap.add_argument("--images", type=int, default=0, help="first N images of the cache (default 0 = all)")
    ap.add_argument("--fit-cache", help="a training rollout cache of the same detector and windows: fit the "
                                        "fit:* window scorers on it (ridge regression on each window's AP points)")
    ap.add_argument("--dense", action="store_true", help="with --fit-cache: also fit:dense, the coarse pass's FPN "
                                                         "features pooled over each window (runs the detector)")
    ap.add_argument("--miss", help="a miss map (benchmarks/miss_map.py) of the cache's detector: score windows by "
                                   "its mass, alone and added to the entropy (runs the detector)")
    ap.add_argument("--miss-beta", type=float, nargs="+", default=[0.25, 1.0],
                    help="with --miss: weights of the miss map added to the entropy (default 0.25 1)")
    ap.add_argument("--checkpoint", help="with --dense or --miss: the detector (default: the checkpoint the cache "
                                         "names); its detector id must be the cache's")
    args = ap.parse_args(argv)
    if args.dense and not args.fit_cache:
        ap.error("--dense needs --fit-cache")
    if any(b <= 0 for b in args.miss_beta):
        ap.error("--miss-beta values must be > 0")

    from scipy.stats import spearmanr

    from zoomdet.eval.results import command_line, write_results
    from zoomdet.rnet.cache import RolloutCache
    from zoomdet.rnet.model import EntropyGain, RNetGain
    from zoomdet.zoom.gain import object_fine_gains
    from zoomdet.zoom.windows import GainMap

    try:
        cache = RolloutCache(args.cache)
        states = {"entropy": EntropyGain()}
        for path in args.rnet:  # an R-net of another detector is refused: its features mean something else
            states[f"rnet:{Path(path).stem}"] = RNetGain.from_checkpoint(path, expect_detector=cache.detector_id)
        fit_cache = detector = images = None
        if args.fit_cache:
            fit_cache = RolloutCache(args.fit_cache)
            if (fit_cache.detector_id, fit_cache.zoom) != (cache.detector_id, cache.zoom):
                raise ValueError(f"{args.fit_cache} was built with another detector or zoom settings than "
                                 f"{args.cache}: its windows' labels do not carry over")
        miss = None
        if args.dense or args.miss:
            from zoomdet.detector.detector import Detector

            detector = Detector.from_checkpoint(args.checkpoint or cache.manifest["checkpoint"])
            if detector.detector_id != cache.detector_id:
                raise ValueError(f"detector {detector.detector_id} is not the cache's {cache.detector_id}")
        if args.miss:
            from miss_map import miss_map_for_cache
            from zoomdet.rnet.miss import blend, density_scales

            miss, miss_images = miss_map_for_cache(args.miss, cache, detector), CacheImages(cache)
            if not args.dense:
                detector = None  # cache_windows computes dense features only when it gets a detector
    except (FileNotFoundError, ValueError) as e:
        ap.error(str(e))
    kinds = ["summaries", "dense"] if args.dense else ["summaries"] if fit_cache else []
    scorers = {}
    if fit_cache is not None:
        try:
            fit_images, images = (CacheImages(fit_cache), CacheImages(cache)) if detector else (None, None)
            fit = list(cache_windows(fit_cache, states, len(fit_cache), detector, fit_images, desc="fit images"))
            if not fit:
                raise ValueError(f"{args.fit_cache}: no image with objects to fit on")
            for kind in kinds:
                scorers[f"fit:{kind}"] = fit_ridge([f[5][kind] for f in fit], [f[1] for f in fit],
                                                   [f[3] for f in fit])
                print(f"fit:{kind}: {fit[0][5][kind].shape[1]} features, {len(fit)} images, ridge penalty "
                      f"{scorers[f'fit:{kind}'][1]:g} (5-fold cross-validation)")
        except ValueError as e:
            ap.error(str(e))
    miss_names = ["miss", *(f"entropy+miss@{b:g}" for b in args.miss_beta)] if miss else []
    names = [*states, *scorers, *miss_names, "fine-objects"]
    spearman = {n: [] for n in names}
    picks = {n: [] for n in names}
    random_pick, oracle_pick = [], []
    n_images, k = 0, 0
    total = min(args.images, len(cache)) if args.images else len(cache)
    for rec, labels, boxes, pixels, state_sums, features in cache_windows(cache, states, total, detector, images):
        k = rec.num_candidates
        n_images += 1
        scores = dict(state_sums)
        for n, (predict, _) in scorers.items():
            scores[n] = predict(features[n.split(":", 1)[1]])
        if miss is not None:
            scores["miss"] = miss.window_sums(miss_images(rec.image_id), boxes)
            scales = density_scales(scores["entropy"], scores["miss"], pixels)
            for b in args.miss_beta:
                scores[f"entropy+miss@{b:g}"] = blend(scores["entropy"], scores["miss"], scales, b)
        scores["fine-objects"] = GainMap(rec.width, rec.height, rec.gt_boxes, object_fine_gains(
            rec.coarse, rec.fine[:k], rec.gt_boxes, rec.gt_labels)).window_sums(boxes)
        for n, sc in scores.items():
            if np.ptp(sc) > 0 and np.ptp(labels) > 0:
                spearman[n].append(spearmanr(sc, labels).statistic)
            picks[n].append(first_pick(sc, pixels, labels))
        random_pick.append(float(labels.mean()))
        oracle_pick.append(max(float(labels.max()), 0.0))

    if not n_images:
        ap.error(f"{args.cache}: no image with objects (a window's AP gain is undefined without them)")
    rnd, orc = float(np.mean(random_pick)), float(np.mean(oracle_pick))
    common = {"dataset": args.dataset, "images": n_images, "windows_per_image": int(k), "random_pick": rnd,
              "oracle_pick": orc, "detector_id": cache.detector_id, "cache": args.cache,
              "command": command_line(), "date": __import__("datetime").date.today().isoformat()}
    if fit_cache is not None:
        common["fit_cache"] = args.fit_cache
    if miss is not None:
        common["miss_map"] = {"path": args.miss, **{k: miss.meta[k] for k in ("train_data", "train_images",
                                                                             "epochs", "miss_iou", "miss_score")}}
    rows = []
    print(f"{args.dataset}: {n_images} images with objects, {k} candidate windows each; AP points of the first "
          f"window zoomed (random {rnd:.2f}, oracle {orc:.2f})")
    print(f"{'state':<24}{'spearman':>10}{'first_pick':>12}{'share':>8}")
    for n in names:
        pick = float(np.mean(picks[n]))
        share = (pick - rnd) / (orc - rnd) if orc > rnd else float("nan")
        sp = float(np.mean(spearman[n])) if spearman[n] else float("nan")
        row = {**common, "state": n, "spearman": sp, "first_pick": pick, "share": share}
        if n in scorers:
            row["ridge_alpha"] = scorers[n][1]
        rows.append(row)
        print(f"{n:<24}{sp:10.3f}{pick:12.2f}{100 * share:7.1f}%")
    path = write_results("window_signal", rows, replace={"dataset": args.dataset},
                         required=("dataset", "images", "state", "command", "date"))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
