"""True accuracy gain of zooming (Dynamic Zoom-in Network, Eq. 1-2).

For the coarse detections a window would replace and the fine detections
the window produces:

* coarse and fine boxes of the same class are matched greedily (fine boxes
  in score order) at IoU > ``match_iou``;
* ``g`` = 1 when a detection matches a same-class, non-crowd ground-truth box
  at IoU >= 0.5, else 0; for a pair, ``g`` is 1 if either box matches;
* a matched pair with coarse score ``p_l`` and fine score ``p_h`` gains
  ``|g - p_l| - |g - p_h|``, in [-1, 1];
* an unmatched detection has score 0 on the other side: a fine-only true
  positive gains ``p_h``, a fine-only false positive ``-p_h``; a coarse-only
  true positive the fine pass loses gains ``-p_l``, a coarse-only false
  positive that zooming removes gains ``+p_l``;
* detections lying mostly (IoS >= 0.5) in crowd / ignore regions gain 0.

The gain of a window is the sum over its items.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from zoomdet.types import Detections, Window

__all__ = ["GainItems", "detection_gains", "window_gain_items", "fresh_gain", "window_ap_gains", "object_fine_gains"]


@dataclass(frozen=True)
class GainItems:
    """Gain of each coarse/fine detection (pair), located at a box.

    Attributes:
        boxes: ``Tensor[K, 4]`` xyxy pixels (the fine box of a pair).
        gains: ``Tensor[K]`` float32 in [-1, 1].
        kind: ``Tensor[K]`` int64, 0 = matched pair, 1 = fine only, 2 = coarse only.
        coarse_index: ``Tensor[K]`` int64 index of the coarse detection of the
            item (pairs and coarse-only), -1 for fine-only items.
    """

    boxes: Tensor
    gains: Tensor
    kind: Tensor
    coarse_index: Tensor

    def total(self) -> float:
        return float(self.gains.sum())

    @cached_property
    def centres(self) -> np.ndarray:
        """``float64[K, 2]`` box centres (x, y), computed once."""
        return ((self.boxes[:, :2] + self.boxes[:, 2:]) / 2).double().numpy()

    @cached_property
    def gains_np(self) -> np.ndarray:
        return self.gains.double().numpy()


def _class_matches(boxes: Tensor, labels: Tensor, gt_boxes: Tensor, gt_labels: Tensor, thr: float) -> Tensor:
    """``Tensor[N, G]`` bool: detection ``i`` (xyxy, category id) has ground-truth box ``j``'s class and IoU >= ``thr``."""
    return (box_iou(boxes, gt_boxes) >= thr) & (labels[:, None] == gt_labels[None, :])


def _true_positive(det: Detections, gt_boxes: Tensor, gt_labels: Tensor, thr: float = 0.5) -> Tensor:
    if len(det) == 0 or len(gt_boxes) == 0:
        return torch.zeros(len(det))
    return _class_matches(det.boxes, det.labels, gt_boxes, gt_labels, thr).any(dim=1).float()


def _in_crowd(det: Detections, crowd_boxes: Tensor) -> Tensor:
    if len(det) == 0 or len(crowd_boxes) == 0:
        return torch.zeros(len(det), dtype=torch.bool)
    from zoomdet.zoom.merge import intersection_over_self

    return (intersection_over_self(det.boxes, crowd_boxes) >= 0.5).any(dim=1)


def detection_gains(coarse: Detections, fine: Detections, gt_boxes: Tensor, gt_labels: Tensor,
                    gt_crowd: Tensor | None = None, match_iou: float = 0.5) -> GainItems:
    """Gain items for one window (see the module docstring for every case).

    Args:
        coarse: the coarse detections the window replaces, image pixels.
        fine: the window's fine detections, image pixels.
        gt_boxes: ``Tensor[G, 4]`` xyxy ground truth; ``gt_labels`` ``[G]``;
            ``gt_crowd`` ``[G]`` bool (crowd boxes are ignore regions).
        match_iou: coarse/fine matching threshold (strictly greater).
    """
    if gt_crowd is None:
        gt_crowd = torch.zeros(len(gt_boxes), dtype=torch.bool)
    real_b, real_l = gt_boxes[~gt_crowd], gt_labels[~gt_crowd]
    crowd_b = gt_boxes[gt_crowd]
    g_c, g_f = _true_positive(coarse, real_b, real_l), _true_positive(fine, real_b, real_l)
    ign_c, ign_f = _in_crowd(coarse, crowd_b), _in_crowd(fine, crowd_b)

    fine_match = torch.full((len(fine),), -1, dtype=torch.int64)
    coarse_used = torch.zeros(len(coarse), dtype=torch.bool)
    if len(fine) and len(coarse):
        iou = box_iou(fine.boxes, coarse.boxes) * (fine.labels[:, None] == coarse.labels[None, :])
        for i in torch.argsort(fine.scores, descending=True).tolist():
            cand = iou[i].clone()
            cand[coarse_used] = 0
            j = int(torch.argmax(cand))
            if cand[j] > match_iou:
                fine_match[i] = j
                coarse_used[j] = True

    boxes, gains, kinds, cidx = [], [], [], []
    for i in range(len(fine)):
        j = int(fine_match[i])
        p_h = float(fine.scores[i])
        if j >= 0:
            g = max(float(g_f[i]), float(g_c[j]))
            gain = abs(g - float(coarse.scores[j])) - abs(g - p_h)
            ignore = bool(ign_f[i]) or bool(ign_c[j])
            kind = 0
        else:
            g = float(g_f[i])
            gain = g - abs(g - p_h)
            ignore = bool(ign_f[i])
            kind = 1
        boxes.append(fine.boxes[i])
        gains.append(0.0 if ignore else gain)
        kinds.append(kind)
        cidx.append(j)
    for j in range(len(coarse)):
        if coarse_used[j]:
            continue
        g, p_l = float(g_c[j]), float(coarse.scores[j])
        boxes.append(coarse.boxes[j])
        gains.append(0.0 if ign_c[j] else abs(g - p_l) - g)
        kinds.append(2)
        cidx.append(j)
    if not boxes:
        z = torch.zeros(0, dtype=torch.int64)
        return GainItems(torch.zeros((0, 4)), torch.zeros(0), z, z.clone())
    return GainItems(torch.stack(boxes).float(), torch.tensor(gains, dtype=torch.float32),
                     torch.tensor(kinds, dtype=torch.int64), torch.tensor(cidx, dtype=torch.int64))


def window_gain_items(coarse: Detections, fine: Detections, window: Window, gt_boxes: Tensor, gt_labels: Tensor,
                      gt_crowd: Tensor | None = None, drop_ios: float = 0.5,
                      coarse_min_px: float | None = None) -> tuple[Tensor, GainItems]:
    """Gain items of zooming into ``window``: the coarse boxes the merge rule would replace there
    (IoS with the window >= ``drop_ios``) against the window's ``fine`` detections; with
    ``coarse_min_px`` (:class:`~zoomdet.zoom.merge.MergeConfig`), boxes that large on either side stay
    out, as the merge keeps the coarse ones and drops the fine ones.

    Returns:
        The indices into ``coarse`` of the replaced boxes (``GainItems.coarse_index`` indexes
        this subset) and the items.
    """
    from zoomdet.zoom.merge import coarse_sized, intersection_over_self

    if len(coarse):
        replaced = intersection_over_self(coarse.boxes, window.box()[None])[:, 0] >= drop_ios
        idx = torch.nonzero(replaced & ~coarse_sized(coarse.boxes, coarse_min_px)).flatten()
    else:
        idx = torch.zeros(0, dtype=torch.int64)
    fine = fine.select(~coarse_sized(fine.boxes, coarse_min_px))
    return idx, detection_gains(coarse.select(idx), fine, gt_boxes, gt_labels, gt_crowd)


def fresh_gain(items: GainItems, zoomed: Sequence[Window]) -> float:
    """Gain of ``items`` not already collected: the sum over items whose box centre lies outside
    every window in ``zoomed``. The oracle ranks windows by it and the environment's reward uses it,
    so zooming twice over the same objects is not paid twice."""
    if len(items.gains) == 0:
        return 0.0
    if not zoomed:
        return items.total()
    x, y = items.centres[:, 0], items.centres[:, 1]
    fresh = np.ones(len(x), dtype=bool)
    for z in zoomed:
        fresh &= (x < z.x0) | (x >= z.x1) | (y < z.y0) | (y >= z.y1)
    return float(items.gains_np[fresh].sum())


def window_ap_gains(coarse: Detections, fines: Sequence[Detections], windows: Sequence[Window], gt_boxes: Tensor,
                    gt_labels: Tensor, gt_crowd: Tensor | None, width: int, height: int, merge) -> np.ndarray:
    """AP points gained by zooming each window alone (``reward: ap`` of the environment before its pixel cost).

    For each window, the coarse detections are merged with that window's fine detections by the engine's rule
    (:func:`~zoomdet.zoom.merge.merge_zoom` with ``merge``, a :class:`~zoomdet.zoom.merge.MergeConfig`) and the
    image's COCO AP@[.5:.95] (:class:`~zoomdet.eval.coco_eval.ImageAP`) is compared with the coarse pass's own.

    Returns:
        ``float64[K]``: ``100 * (AP(coarse + window k) - AP(coarse))``; all NaN on an image without objects.
    """
    from zoomdet.eval.coco_eval import ImageAP
    from zoomdet.zoom.merge import merge_zoom

    crowd = torch.zeros(len(gt_boxes), dtype=torch.bool) if gt_crowd is None else gt_crowd
    scorer = ImageAP(gt_boxes, gt_labels, crowd, width, height)
    if not scorer.has_objects:
        return np.full(len(windows), np.nan)
    plain = coarse.without_features()
    base = scorer(plain)
    return np.array([100.0 * (scorer(merge_zoom(plain, [f], [w], width, height, merge).detections) - base)
                     for f, w in zip(fines, windows)], dtype=np.float64)


def _best_matched_score(det: Detections, gt_boxes: Tensor, gt_labels: Tensor, iou: float) -> Tensor:
    """``Tensor[G]``: for each ground-truth box, the highest score of a same-class detection at IoU >= ``iou`` (0 if none)."""
    if len(det) == 0 or len(gt_boxes) == 0:
        return torch.zeros(len(gt_boxes))
    hit = _class_matches(det.boxes.float(), det.labels, gt_boxes.float(), gt_labels, iou).T  # [G, N]
    return torch.where(hit, det.scores[None, :].float(), torch.zeros(())).max(dim=1).values


def object_fine_gains(coarse: Detections, fines: Sequence[Detections], gt_boxes: Tensor, gt_labels: Tensor,
                      iou: float = 0.5) -> Tensor:
    """What the fine pass adds for each ground-truth object: its best matched fine score minus its best matched
    coarse score, floored at 0 (ground truth only; a diagnostic of where zooming pays, not a reward).

    Args:
        coarse: coarse detections (xyxy full-image pixels).
        fines: fine detections of any windows (e.g. every cached window of an image); an object's best fine
            score is taken over all of them.
        gt_boxes: ``Tensor[G, 4]`` xyxy full-image pixels; ``gt_labels``: ``Tensor[G]`` category ids.
        iou: the IoU at which a same-class detection matches an object.

    Returns:
        ``Tensor[G]`` float32 in [0, 1].
    """
    fine = torch.zeros(len(gt_boxes))
    for f in fines:
        fine = torch.maximum(fine, _best_matched_score(f, gt_boxes, gt_labels, iou))
    return (fine - _best_matched_score(coarse, gt_boxes, gt_labels, iou)).clamp(min=0.0)
