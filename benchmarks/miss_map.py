"""Where did the coarse pass miss objects? A dense map learned from the coarse pass's own features.

    python benchmarks/miss_map.py --config configs/eval/hituav_ft_agent.yaml \\
        --data ../shared/data/hit-uav/train.json --exclude-trained-on configs/detector/tiny_hituav_ft.yaml \\
        --val-data ../shared/data/hit-uav/val.json --dataset hituav-val-ftdet-miss-u240 --out runs/s33/miss-ft.pt
    python benchmarks/window_signal.py --cache runs/s33/hit-val60-ft --miss runs/s33/miss-ft.pt \\
        --dataset hituav-val60-ftdet-miss

Every state the rules and agents read is built from the coarse pass's detections (their scores, their RoI
features). An object the coarse pass did not box at all leaves nothing there, and those objects are much of what
the fine pass adds. ``benchmarks/window_signal.py --dense`` asked whether the detector's FPN features pooled over
a window tell more, with one ridge regression per window label (a few thousand noisy labels); this script asks
the same question with dense labels, which need no rollout cache: on images the detector never saw, each ground
truth object that the coarse pass missed (no coarse box of its class with IoU >= ``--miss-iou`` scoring
>= ``--miss-score``) marks the cells its box covers. A small convolutional head on the frozen coarse pass's FPN
levels 0 and 1 (stride 4 and 8 of the coarse input) learns that map with a weighted binary cross-entropy.

The head is saved with the detector id it was trained on; ``window_signal.py --miss`` scores the candidate
windows of a rollout cache of that detector by the predicted probability mass they hold (``miss``), alone and
added to the rule's entropy (``entropy+miss``), against the AP oracle's first pick. With ``--val-data`` this
script also prints the head's pixel-level average precision on those images, beside a map that knows nothing
(the positive rate) and the coarse boxes' own entropy map, and writes that row to
``benchmarks/results/miss_map.json`` (replacing ``--dataset``'s row).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from zoomdet.rnet.miss import (LEVELS, MissHead, MissMap as _MissMap, cell_boxes, density_scales,  # noqa: E402
                               level_stack, probs_gain_map)

__all__ = ["LEVELS", "MissHead", "MissMap", "cell_boxes", "density_scales", "probs_gain_map", "coarse_view",
           "missed_objects", "cell_target", "entropy_cells", "train_head", "average_precision", "miss_map_for_cache",
           "labelled_images"]


@torch.inference_mode()
def coarse_view(detector, image: Tensor, coarse_scale: float):
    """The coarse pass as the engine runs it, and its FPN features on a grid of cells.

    Args:
        detector: a :class:`~zoomdet.detector.detector.Detector` with an R-CNN model (backbone and transform).
        image: ``Tensor[3, H, W]`` (``uint8`` or float in [0, 1]), full resolution.
        coarse_scale: the engine's ``zoom.coarse_scale``.

    Returns:
        ``(features, detections, cell)``: ``float32[2 * C, h, w]`` levels 0 and 1 cut to the image (padding
        left out), the coarse :class:`~zoomdet.types.Detections` (full-image pixels) and a cell's side in
        full-resolution pixels (x, y).
    """
    from zoomdet.types import Window

    _, H, W = image.shape
    # one forward pass: the detections and the backbone maps (ValueError for a detector that is no R-CNN)
    detections, maps, cell = detector.detect_with_maps(image, Window.full(W, H, coarse_scale), features=False)
    return level_stack(maps), detections, cell


def missed_objects(gt_boxes: Tensor, gt_labels: Tensor, gt_crowd: Tensor, coarse, iou: float = 0.5,
                   score: float = 0.5) -> Tensor:
    """``bool[N]``: the ground truth objects the coarse pass missed: not crowd, and no coarse box of their
    category overlapping them by IoU >= ``iou`` scores >= ``score``."""
    from torchvision.ops import box_iou

    missed = ~gt_crowd.bool()
    if len(gt_boxes) and len(coarse.boxes):
        overlap = box_iou(gt_boxes.float(), coarse.boxes.float()) >= iou
        same = gt_labels[:, None] == coarse.labels[None, :]
        found = (overlap & same & (coarse.scores[None, :] >= score)).any(1)
        missed &= ~found
    return missed


def cell_target(boxes: Tensor, shape: tuple[int, int], cell: tuple[float, float]) -> Tensor:
    """``float32[h, w]``: 1 at the cells whose centre lies in one of ``boxes`` (xyxy full-image pixels) and at the
    cell holding each box's centre (so a box smaller than a cell marks one), else 0."""
    h, w = shape
    target = torch.zeros(h, w)
    if not len(boxes):
        return target
    cx = (torch.arange(w) + 0.5) * cell[0]
    cy = (torch.arange(h) + 0.5) * cell[1]
    b = boxes.float()
    inside = ((cx[None, None, :] >= b[:, 0, None, None]) & (cx[None, None, :] <= b[:, 2, None, None])
              & (cy[None, :, None] >= b[:, 1, None, None]) & (cy[None, :, None] <= b[:, 3, None, None]))
    target[inside.any(0)] = 1.0
    i = ((b[:, 0] + b[:, 2]) / 2 / cell[0]).long().clamp(0, w - 1)
    j = ((b[:, 1] + b[:, 3]) / 2 / cell[1]).long().clamp(0, h - 1)
    target[j, i] = 1.0
    return target


def entropy_cells(coarse, shape: tuple[int, int], cell: tuple[float, float]) -> np.ndarray:
    """``float64[h, w]``: the rule's map on the same cells: the binary entropy of the coarse scores
    (:class:`~zoomdet.rnet.model.EntropyGain`) spread over each box, per cell."""
    from zoomdet.rnet.model import EntropyGain
    from zoomdet.zoom.windows import GainMap

    h, w = shape
    boxes = cell_boxes(shape, cell)
    gm = GainMap(int(round(w * cell[0])), int(round(h * cell[1])), coarse.boxes, EntropyGain().predict(coarse),
                 cell=1)
    return gm.window_sums(boxes.numpy()).reshape(h, w)


def train_head(features: list[Tensor], targets: list[Tensor], epochs: int = 30, lr: float = 1e-3,
               pos_weight: float = 10.0, seed: int = 0, batch: int = 8, progress: bool = True) -> MissHead:
    """Fit a :class:`MissHead` to ``targets`` (``float32[h, w]`` per image) from ``features``
    (``float32[2C, h, w]``), with random horizontal flips; images of one size per batch."""
    from tqdm import tqdm

    if not features:
        raise ValueError("no image to train the miss map on")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    head = MissHead(features[0].shape[0])
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight))
    by_shape: dict[tuple, list[int]] = {}
    for k, f in enumerate(features):
        by_shape.setdefault(tuple(f.shape), []).append(k)
    bar = tqdm(range(epochs), desc="miss head", disable=not progress)
    for _ in bar:
        losses = []
        for idx in by_shape.values():
            order = rng.permutation(idx)
            for s in range(0, len(order), batch):
                part = order[s:s + batch]
                x = torch.stack([features[k] for k in part])
                y = torch.stack([targets[k] for k in part])
                if rng.random() < 0.5:
                    x, y = x.flip(-1), y.flip(-1)
                loss = loss_fn(head(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(losses):.4f}")
    return head.eval()


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision of ``scores`` ranking the positive ``labels`` (1) first, as a step integral of
    precision over recall."""
    order = np.argsort(-scores, kind="stable")
    hits = labels[order] > 0
    if not hits.any():
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


class MissMap(_MissMap):
    """A trained miss map (:class:`zoomdet.rnet.miss.MissMap`) with the detector it reads, on whole images: the
    predicted map of an image, and the probability mass each window holds.

    Args:
        path: a checkpoint written by this script.
        detector: the detector the head was trained on; another detector id is refused.
        coarse_scale: the coarse scale it must read (``None``: not checked); another is refused.
    """

    def __init__(self, path: str | Path, detector, coarse_scale: float | None = None) -> None:
        super().__init__(path, detector.detector_id, coarse_scale)
        self.detector = detector

    def predict(self, image: Tensor):
        """``(probs float32[h, w], cell (x, y) full-image pixels, coarse detections)`` of ``image``."""
        features, coarse, cell = coarse_view(self.detector, image, self.coarse_scale)
        return self.head.probs(features), cell, coarse

    def window_sums(self, image: Tensor, boxes: np.ndarray) -> np.ndarray:
        """``float64[K]``: the predicted probability mass inside each window (``float[K, 4]`` xyxy full-image
        pixels), each cell's probability spread over its area."""
        probs, cell, _ = self.predict(image)
        _, H, W = image.shape
        return probs_gain_map(probs, cell, W, H).window_sums(boxes)


def miss_map_for_cache(path: str | Path, cache, detector) -> MissMap:
    """The :class:`MissMap` at ``path`` for the windows of rollout ``cache``: ``detector`` (the one the head reads)
    must be the cache's, and the head must read the coarse view at the cache's ``zoom.coarse_scale``; raises
    ``ValueError`` otherwise (``FileNotFoundError`` for a missing file)."""
    if detector.detector_id != cache.detector_id:
        raise ValueError(f"detector {detector.detector_id} is not the cache's {cache.detector_id}")
    return MissMap(path, detector, cache.zoom.coarse_scale)


def labelled_images(detector, data: str, coarse_scale: float, ids: list[int], iou: float, score: float,
                    desc: str):
    """Per image id of ``data``: ``(features, target, coarse, cell)`` (:func:`coarse_view`, :func:`cell_target`
    of the objects :func:`missed_objects` names) and the number of objects missed and present."""
    from tqdm import tqdm

    from zoomdet.data.coco import CocoDataset

    ds = CocoDataset(data)
    for iid in tqdm(ids, desc=desc):
        image = ds.load_image(iid, keep_uint8=True)
        boxes, labels, crowd = ds.targets(iid)
        features, coarse, cell = coarse_view(detector, image, coarse_scale)
        missed = missed_objects(boxes, labels, crowd, coarse, iou, score)
        yield features, cell_target(boxes[missed], tuple(features.shape[-2:]), cell), coarse, cell, \
            int(missed.sum()), int((~crowd).sum())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="eval config: the detector checkpoint and zoom.coarse_scale")
    ap.add_argument("--data", required=True, help="COCO file of the training images")
    ap.add_argument("--exclude-trained-on", action="append", default=[], metavar="DETECTOR_YAML",
                    help="leave out the images this detector config trains on (repeat); the coarse pass misses "
                         "little on them")
    ap.add_argument("--images", type=int, default=0, help="a seeded sample of N training images (0 = all)")
    ap.add_argument("--val-data", help="COCO file to score the map on (pixel-level average precision)")
    ap.add_argument("--val-images", type=int, default=0, help="a seeded sample of N of --val-data (0 = all)")
    ap.add_argument("--miss-iou", type=float, default=0.5, help="IoU with which a coarse box finds an object")
    ap.add_argument("--miss-score", type=float, default=0.5, help="the score from which a coarse box finds it")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--pos-weight", type=float, default=10.0, help="weight of a missed object's cell in the loss")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="checkpoint to write (.pt)")
    ap.add_argument("--dataset", help="with --val-data: name of the row in benchmarks/results/miss_map.json")
    args = ap.parse_args(argv)
    if not 0 < args.miss_iou <= 1 or not 0 < args.miss_score <= 1:
        ap.error("--miss-iou and --miss-score must be in (0, 1]")
    if args.epochs < 1 or args.images < 0 or args.val_images < 0 or args.pos_weight <= 0:
        ap.error("--epochs must be >= 1, --images and --val-images >= 0, --pos-weight > 0")
    if bool(args.val_data) != bool(args.dataset):
        ap.error("--val-data and --dataset go together: the row scores the map on --val-data")

    from zoomdet.config import load_config
    from zoomdet.data.coco import CocoDataset
    from zoomdet.detector.detector import Detector, default_checkpoint
    from zoomdet.detector.train import trained_on
    from zoomdet.eval.evaluator import EvalConfig

    try:
        cfg = load_config(EvalConfig, args.config)
        detector = Detector.from_checkpoint(cfg.checkpoint or str(default_checkpoint()))
        if not hasattr(detector.model, "backbone"):
            raise ValueError("a miss map needs a torchvision detector with a backbone (an R-CNN)")
        seen = [i for path in args.exclude_trained_on for i in trained_on(path, [args.data])[1]]
        train_ids = CocoDataset(args.data).subset(args.images, seed=args.seed, exclude=seen)
        val_ids = CocoDataset(args.val_data).subset(args.val_images, seed=args.seed) if args.val_data else []
    except (FileNotFoundError, ValueError) as e:
        ap.error(str(e))
    scale = cfg.zoom.coarse_scale
    features, targets, n_missed, n_objects = [], [], 0, 0
    for f, t, _, _, missed, present in labelled_images(detector, args.data, scale, train_ids, args.miss_iou,
                                                       args.miss_score, "train images"):
        features.append(f)
        targets.append(t)
        n_missed, n_objects = n_missed + missed, n_objects + present
    print(f"{len(train_ids)} training images: {n_missed} of {n_objects} objects missed by the coarse pass "
          f"({np.mean([float(t.mean()) for t in targets]):.4f} of the cells)")
    head = train_head(features, targets, epochs=args.epochs, pos_weight=args.pos_weight, seed=args.seed)
    ckpt = {"kind": "zoomdet-miss-map", "state_dict": head.state_dict(), "in_channels": features[0].shape[0],
            "hidden": head.net[0].out_channels, "detector_id": detector.detector_id, "coarse_scale": scale,
            "levels": list(LEVELS), "miss_iou": args.miss_iou, "miss_score": args.miss_score,
            "train_data": args.data, "train_images": len(train_ids), "missed": n_missed, "objects": n_objects,
            "epochs": args.epochs, "pos_weight": args.pos_weight, "seed": args.seed}
    if val_ids:
        scores, entropy, labels, vm, vo = [], [], [], 0, 0
        with torch.inference_mode():
            for f, t, coarse, cell, missed, present in labelled_images(
                    detector, args.val_data, scale, val_ids, args.miss_iou, args.miss_score, "val images"):
                scores.append(head.probs(f).flatten().numpy())
                entropy.append(entropy_cells(coarse, tuple(t.shape), cell).flatten())
                labels.append(t.flatten().numpy())
                vm, vo = vm + missed, vo + present
        s, e, y = np.concatenate(scores), np.concatenate(entropy), np.concatenate(labels)
        ckpt["val"] = {"data": args.val_data, "images": len(val_ids), "missed": vm, "objects": vo,
                       "positive_rate": float(y.mean()), "ap_miss": average_precision(s, y),
                       "ap_entropy": average_precision(e, y)}
        print(f"{len(val_ids)} val images, {vm} of {vo} objects missed: cell-level AP of the miss map "
              f"{ckpt['val']['ap_miss']:.3f}, of the coarse entropy {ckpt['val']['ap_entropy']:.3f}, "
              f"positive rate {y.mean():.4f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, args.out)
    print(f"wrote {args.out}")
    if val_ids:
        from zoomdet.eval.results import command_line, write_results

        row = {"dataset": args.dataset, "detector_id": detector.detector_id, "checkpoint": args.out,
               **{k: ckpt[k] for k in ("train_data", "train_images", "missed", "objects", "epochs", "pos_weight",
                                       "seed", "miss_iou", "miss_score")},
               **{f"val_{k}": v for k, v in ckpt["val"].items()},
               "command": command_line(), "date": __import__("datetime").date.today().isoformat()}
        path = write_results("miss_map", [row], replace={"dataset": args.dataset},
                             required=("dataset", "command", "date"))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
