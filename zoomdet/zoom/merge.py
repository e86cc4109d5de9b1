"""Merging coarse and fine detections, and SAHI-style postprocessing.

The zoom merge rule (:func:`merge_zoom`), in order:

1. A coarse box is *replaced* by a zoomed window when its intersection with
   the window covers at least ``drop_ios`` of the box's own area (IoS).
   With ``coarse_min_px`` set, each scale keeps the object sizes it detects
   best (the valid ranges of SNIP, Singh & Davis, CVPR 2018): boxes at least
   that size (``sqrt`` of the area, full-resolution pixels) are taken from the
   coarse pass even inside a zoomed window, and fine boxes that large are
   dropped there.
2. A fine box that touches an interior edge of its window (an edge that is
   not the image border, within ``border_px``) may be a fragment of an object
   the window cuts. If it lies mostly inside (IoS >= 0.5) a same-class
   coarse box that extends past that window, the fragment is dropped and the
   coarse box is kept.
3. Class-wise NMS (:func:`torchvision.ops.batched_nms`, IoU ``nms_iou``) over
   the kept coarse boxes and all fine boxes removes duplicates where windows
   overlap or a fine box re-finds a kept coarse one.

With ``method: fuse``, step 1 does not throw the coarse boxes inside a window
away: they are fused with the window's fine boxes (:func:`fuse_boxes`), so an
object seen at both scales gets the score-weighted mean of its boxes. Two
scales of one detector are an ensemble: on Airbus val, the whole image at 0.25
and at 0.5 fused this way scores above the single full-resolution pass. A
fused box keeps its cluster's top score (``fuse_score: max``). With
``fuse_score: mean`` the paper's rule runs first (steps 1-3), then the coarse
boxes it dropped are fused with the window boxes it kept, each cluster scored
by the mean of the two passes' best scores in it, a pass that did not see the
object counting 0 (weighted boxes fusion's score for two models), and a last
NMS runs: an object both scales agree on outranks one only a single pass
reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_area, box_iou

from zoomdet.types import Detections, Window

__all__ = ["MergeConfig", "MergeResult", "fuse_boxes", "intersection_over_self", "merge_zoom", "sahi_postprocess", "merge_tiles",
           "STAGE_COARSE", "STAGE_FINE", "coarse_sized"]

STAGE_COARSE = 0
STAGE_FINE = 1
FUSE_SCORES = ("max", "mean")


@dataclass
class MergeConfig:
    """How fine detections replace coarse ones."""

    drop_ios: float = 0.5
    """A coarse box is replaced when this fraction of its area lies inside a zoomed window."""
    nms_iou: float = 0.5
    """IoU of the final class-wise NMS."""
    border_px: float = 2.0
    """A fine box within this many pixels of an interior window edge counts as possibly cut."""
    method: str = "replace"
    """``replace`` (the paper's rule: a zoomed window replaces the coarse boxes inside it) or ``fuse`` (they are
    fused with the window's boxes by :func:`fuse_boxes`: weighted box fusion of the two scales)."""
    fuse_iou: float = 0.55
    """With ``method: fuse``: boxes of one class overlapping a cluster's top box by at least this IoU join it
    (0.55, the default of weighted box fusion)."""
    fuse_score: str = "max"
    """With ``method: fuse``: a fused box's score. ``max``: its cluster's top score. ``mean``: the paper's rule
    runs first, then the coarse boxes it dropped are fused with the window boxes it kept, each cluster scored by
    the mean of the coarse pass's and the windows' best scores in it, 0 for a pass with no box in it (weighted
    boxes fusion's confidence for two models), so boxes both scales agree on rank above boxes of one."""
    coarse_min_px: Optional[float] = None
    """Objects at least this size (``sqrt(w * h)``, full-resolution pixels) come from the coarse pass
    even inside zoomed windows, and fine boxes that large are dropped there; ``None``: zoomed windows
    replace every coarse box inside them. For detectors that are better on large objects at the coarse
    scale than at full resolution (``zoomdet detector eval --scales`` shows it, by size)."""

    def __post_init__(self) -> None:
        if self.method not in ("replace", "fuse"):
            raise ValueError(f"merge method must be replace or fuse, got {self.method!r}")
        if self.fuse_score not in FUSE_SCORES:
            raise ValueError(f"fuse_score must be one of {', '.join(FUSE_SCORES)}, got {self.fuse_score!r}")
        fractions = {"drop_ios": self.drop_ios, "nms_iou": self.nms_iou, "fuse_iou": self.fuse_iou}
        bad = [f"{k} = {v}" for k, v in fractions.items() if not 0 < v <= 1]
        if bad:
            raise ValueError(f"{', '.join(bad)}: overlaps are fractions in (0, 1]")
        if self.border_px < 0 or (self.coarse_min_px is not None and not self.coarse_min_px > 0):
            raise ValueError(f"border_px must be >= 0 and coarse_min_px > 0 (or null), got {self.border_px} and "
                             f"{self.coarse_min_px}")


def fuse_boxes(det: Detections, iou: float = 0.55, source: Optional[Tensor] = None,
               score: str = "max") -> tuple[Detections, Tensor]:
    """Fuse overlapping same-class boxes: the coordinates of each cluster averaged, weighted by score.

    Clusters are formed as NMS would (:func:`torchvision.ops.batched_nms` at ``iou``: each kept box heads a
    cluster, and every other box, suppressed by at least one same-class head, joins the one it overlaps most). A cluster
    becomes one box: the score-weighted mean of its members' coordinates, with the head's (highest) score and
    label. This is the fusion of weighted boxes fusion (Solovyev et al., 2021) with its ``max`` confidence,
    clustered against the head box instead of the running mean ("box voting", Gidaris & Komodakis, 2015);
    it runs in a few tensor operations.

    Args:
        det: boxes xyxy, pixels, with scores and labels (features are dropped).
        iou: IoU at which a box joins a cluster.
        source: ``Tensor[N]`` int64, the pass each box came from (``STAGE_COARSE`` or ``STAGE_FINE``); needed by
            ``score="mean"``.
        score: the fused box's score: ``max``, the head's; ``mean``, the mean over the two passes of each
            pass's best score in the cluster, 0 for a pass with no member (weighted boxes fusion's confidence
            with two models).

    Returns:
        The fused detections (in head order: by the head's score, which ``mean`` may reorder), and for each the
        index in ``det`` of its head.
    """
    if score not in FUSE_SCORES:
        raise ValueError(f"fuse score must be one of {', '.join(FUSE_SCORES)}, got {score!r}")
    if score == "mean" and (source is None or len(source) != len(det)):
        raise ValueError("fuse score 'mean' needs each box's source pass (one per box)")
    if len(det) == 0:
        return det.without_features(), torch.zeros(0, dtype=torch.int64)
    heads = batched_nms(det.boxes, det.scores, det.labels, iou)
    overlap = box_iou(det.boxes, det.boxes[heads]) * (det.labels[:, None] == det.labels[heads][None, :])
    cluster = overlap.argmax(dim=1)  # every other box was suppressed by a same-class head, so it has one
    cluster[heads] = torch.arange(len(heads))  # a head belongs to itself, even when heads overlap
    w = det.scores
    total = torch.zeros(len(heads)).index_add_(0, cluster, w)
    boxes = torch.zeros(len(heads), 4).index_add_(0, cluster, det.boxes * w[:, None]) / total.clamp(min=1e-12)[:, None]
    scores = det.scores[heads]
    if score == "mean":
        best = [torch.zeros(len(heads)).scatter_reduce_(0, cluster[source == s], w[source == s], "amax")
                for s in (STAGE_COARSE, STAGE_FINE)]
        scores = (best[0] + best[1]) / 2
    return Detections(boxes, scores, det.labels[heads]), heads


def coarse_sized(boxes: Tensor, min_px: Optional[float]) -> Tensor:
    """``Tensor[N]`` bool: boxes (xyxy, full-resolution pixels) of at least ``min_px`` (sqrt of the area);
    all False when ``min_px`` is None."""
    if min_px is None or len(boxes) == 0:
        return torch.zeros(len(boxes), dtype=torch.bool)
    return box_area(boxes).clamp(min=0).sqrt() >= min_px


@dataclass(frozen=True)
class MergeResult:
    """Merged detections and where each came from.

    Attributes:
        detections: merged detections, xyxy pixels.
        stage: ``Tensor[N]`` int64, 0 = coarse pass, 1 = fine pass.
        region: ``Tensor[N]`` int64 index of the window that produced a fine
            box, -1 for coarse boxes.
    """

    detections: Detections
    stage: Tensor
    region: Tensor


def intersection_over_self(a: Tensor, b: Tensor, area_floor: float = 1e-9) -> Tensor:
    """``Tensor[N, M]``: area of ``a[i] ∩ b[j]`` divided by the area of ``a[i]`` (xyxy boxes), that area taken as
    at least ``area_floor`` (px²)."""
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter / box_area(a).clamp(min=area_floor)[:, None]


def _touches_interior_edge(boxes: Tensor, window: Window, width: int, height: int, border: float) -> Tensor:
    x0, y0, x1, y1 = window.as_tuple()
    t = torch.zeros(len(boxes), dtype=torch.bool)
    if x0 > 0:
        t |= boxes[:, 0] <= x0 + border
    if y0 > 0:
        t |= boxes[:, 1] <= y0 + border
    if x1 < width:
        t |= boxes[:, 2] >= x1 - border
    if y1 < height:
        t |= boxes[:, 3] >= y1 - border
    return t


def merge_zoom(coarse: Detections, fine: Sequence[Detections], windows: Sequence[Window], width: int, height: int,
               cfg: MergeConfig | None = None) -> MergeResult:
    """Merge the coarse detections with the fine detections of zoomed windows.

    Args:
        coarse: coarse-pass detections, image pixels.
        fine: fine-pass detections of each window, image pixels.
        windows: the zoomed windows (``len(windows) == len(fine)``).
        width, height: image size, pixels.
        cfg: merge thresholds.

    Returns:
        The merged detections (features kept only if all parts have them),
        with per-box stage and region. Inputs are not modified.
    """
    cfg = cfg or MergeConfig()
    if len(fine) != len(windows):
        raise ValueError(f"{len(fine)} fine results for {len(windows)} windows")
    keep_coarse = torch.ones(len(coarse), dtype=torch.bool)
    if len(coarse) and windows:
        wboxes = torch.stack([w.box() for w in windows])
        ios = intersection_over_self(coarse.boxes, wboxes)  # [Nc, W]
        keep_coarse = ~(ios >= cfg.drop_ios).any(dim=1) | coarse_sized(coarse.boxes, cfg.coarse_min_px)
    parts, stages, regions = [], [], []
    restore = torch.zeros(len(coarse), dtype=torch.bool)
    for r, (det, win) in enumerate(zip(fine, windows)):
        det = det.select(~coarse_sized(det.boxes, cfg.coarse_min_px))  # the coarse pass owns large objects
        keep = torch.ones(len(det), dtype=torch.bool)
        if len(det) and len(coarse):
            cut = _touches_interior_edge(det.boxes, win, width, height, cfg.border_px)
            if cut.any():
                inside = intersection_over_self(det.boxes, coarse.boxes) >= 0.5  # fragment lies in coarse box
                same = det.labels[:, None] == coarse.labels[None, :]
                extends = intersection_over_self(coarse.boxes, win.box()[None])[:, 0] < 0.999  # coarse box leaves window
                parent = inside & same & extends[None, :] & cut[:, None]
                keep = keep & ~parent.any(dim=1)
                restore |= parent.any(dim=0)
        parts.append(det.select(keep))
        stages.append(torch.full((int(keep.sum()),), STAGE_FINE, dtype=torch.int64))
        regions.append(torch.full((int(keep.sum()),), r, dtype=torch.int64))
    keep_coarse |= restore
    kept = coarse.select(keep_coarse)
    if cfg.method == "fuse" and parts and cfg.fuse_score == "mean":  # the paper's merge, then the two passes vote
        merged, idx = _nms(kept, parts, stages, regions, cfg.nms_iou)
        survived = torch.zeros(len(coarse), dtype=torch.bool)
        survived[keep_coarse.nonzero()[:, 0][idx[idx < len(kept)]]] = True
        return _vote(merged, coarse.select(~survived), cfg)
    if cfg.method == "fuse" and parts:  # max: the coarse boxes a window covers are fused with its boxes, not dropped
        fused, stage, region = _fuse_with_windows(coarse.select(~keep_coarse), parts, stages, regions, cfg.fuse_iou,
                                                  "max")
        parts, stages, regions = [fused], [stage], [region]
        kept = kept.without_features()
    return _nms(kept, parts, stages, regions, cfg.nms_iou)[0]


def _nms(kept: Detections, parts: Sequence[Detections], stages: Sequence[Tensor], regions: Sequence[Tensor],
         iou: float) -> tuple[MergeResult, Tensor]:
    """The kept coarse boxes and the windows' boxes after class-wise NMS at ``iou``, and the indices of the
    survivors in ``kept`` followed by ``parts``."""
    all_det = Detections.cat([kept] + list(parts)) if len(kept) or parts else Detections.empty()
    stage = torch.cat([torch.full((len(kept),), STAGE_COARSE, dtype=torch.int64)] + list(stages))
    region = torch.cat([torch.full((len(kept),), -1, dtype=torch.int64)] + list(regions))
    idx = batched_nms(all_det.boxes, all_det.scores, all_det.labels, iou)
    return MergeResult(all_det.select(idx), stage[idx], region[idx]), idx


def _vote(merged: MergeResult, dropped: Detections, cfg: MergeConfig) -> MergeResult:
    """``fuse_score: mean``: the paper's merge (``merged``), then the coarse boxes it dropped (``dropped``:
    replaced by a window, or suppressed by its NMS) fused with its window boxes, each cluster scored by
    the mean of the two passes' best scores, and a last class-wise NMS at ``nms_iou``."""
    fine = merged.stage == STAGE_FINE
    fused, stage, region = _fuse_with_windows(dropped, [merged.detections.select(fine)], [merged.stage[fine]],
                                              [merged.region[fine]], cfg.fuse_iou, "mean")
    kept = merged.detections.select(~fine).without_features()
    return _nms(kept, [fused], [stage], [region], cfg.nms_iou)[0]


def _fuse_with_windows(coarse: Detections, parts: Sequence[Detections], stages: Sequence[Tensor],
                       regions: Sequence[Tensor], iou: float, score: str) -> tuple[Detections, Tensor, Tensor]:
    """Coarse boxes (stage ``STAGE_COARSE``, region -1) and window boxes (``parts`` with their ``stages`` and
    ``regions``) fused by :func:`fuse_boxes` at ``iou`` with ``score``; each fused box takes its head's stage and
    region."""
    pool = Detections.cat([coarse.without_features()] + [p.without_features() for p in parts])
    pool_stage = torch.cat([torch.full((len(coarse),), STAGE_COARSE, dtype=torch.int64)] + list(stages))
    pool_region = torch.cat([torch.full((len(coarse),), -1, dtype=torch.int64)] + list(regions))
    fused, head = fuse_boxes(pool, iou, pool_stage, score)
    return fused, pool_stage[head], pool_region[head]


def _match_matrix(boxes: Tensor, labels: Tensor, metric: str, class_agnostic: bool) -> Tensor:
    if metric == "IOU":
        m = box_iou(boxes, boxes)
    elif metric == "IOS":
        # SAHI's IOS: intersection over the smaller box
        inter = intersection_over_self(boxes, boxes) * box_area(boxes)[:, None]
        smaller = torch.min(box_area(boxes)[:, None], box_area(boxes)[None, :]).clamp(min=1e-9)
        m = inter / smaller
    else:
        raise ValueError(f"match metric must be IOU or IOS, got {metric!r}")
    if not class_agnostic:
        m = m * (labels[:, None] == labels[None, :])
    return m


def sahi_postprocess(det: Detections, kind: str = "GREEDYNMM", metric: str = "IOS", threshold: float = 0.5,
                     class_agnostic: bool = False) -> tuple[Detections, Tensor]:
    """SAHI's postprocessing of sliced predictions, with SAHI's names.

    Args:
        det: detections of all slices, image pixels.
        kind: ``NMS`` (suppress), ``GREEDYNMM`` (each kept box, in score
            order, absorbs the unassigned boxes that match it: their union
            box, its own score) or ``NMM`` (like GREEDYNMM, but matches are
            merged transitively).
        metric: ``IOU`` or ``IOS`` (intersection over the smaller box).
        threshold: match when the metric exceeds this.
        class_agnostic: match across classes.

    Returns:
        The kept (merged) detections and, for each, the index in ``det`` of
        the highest-scoring member of its group.
    """
    kind = kind.upper()
    if kind not in ("NMS", "GREEDYNMM", "NMM"):
        raise ValueError(f"postprocess type must be NMS, GREEDYNMM or NMM, got {kind!r}")
    if len(det) == 0:
        return det, torch.zeros(0, dtype=torch.int64)
    order = torch.argsort(det.scores, descending=True)
    d = det.select(order)
    match = _match_matrix(d.boxes, d.labels, metric.upper(), class_agnostic) > threshold
    n = len(d)
    assigned = torch.zeros(n, dtype=torch.bool)
    keep, boxes = [], []
    for i in range(n):
        if assigned[i]:
            continue
        group = torch.zeros(n, dtype=torch.bool)
        group[i] = True
        frontier = match[i] & ~assigned
        group |= frontier
        if kind == "NMM":  # transitive closure
            while True:
                grown = group | (match[group].any(dim=0) & ~assigned)
                if bool((grown == group).all()):
                    break
                group = grown
        assigned |= group
        keep.append(i)
        if kind == "NMS":
            boxes.append(d.boxes[i])
        else:
            g = d.boxes[group]
            boxes.append(torch.cat([g[:, :2].min(0).values, g[:, 2:].max(0).values]))
    k = torch.tensor(keep, dtype=torch.int64)
    out = d.select(k)
    return out.with_boxes(torch.stack(boxes)), order[k]


def merge_tiles(parts: Sequence[Detections]) -> Detections:
    """Detections of overlapping tiles of one pass, as one set (image pixels): class-wise NMS on intersection
    over the smaller box at 0.5, so a box cut by a tile edge yields to the whole box from the neighbouring
    tile. The engine's bounded passes (``max_pass_pixels``) and the composed cache's tiled pass both use it."""
    return sahi_postprocess(Detections.cat(list(parts)), "NMS", "IOS", 0.5)[0]
