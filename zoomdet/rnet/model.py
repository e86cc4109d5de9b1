"""R-net: predict, from a coarse detection alone, how much zooming on it gains.

Two targets (``RNetConfig.target``): ``gain``, the paper's per-detection labels below, and ``ap``, where the
R-net is fitted so that the sum of its gains over a window (the AG map's window sum) predicts the AP points
the image gains when that window alone is zoomed (:func:`~zoomdet.zoom.gain.window_ap_gains`): the metric
itself, where the paper's gain need not track AP.

The paper's form: two fully connected layers on each coarse detection's RoI
feature vector, trained with an L2 loss on that detection's gain label. One
documented addition: the input also carries the detection's score and its
log width and height (in coarse-pass pixels), because small, uncertain boxes
are where zooming pays; ``extra_inputs: false`` gives the paper's exact input.

Gain labels (:func:`coarse_gain_targets`), from a rollout cache record: for
every candidate window, the coarse boxes it replaces (IoS >= ``drop_ios``)
are matched with the window's fine detections and scored with
:func:`zoomdet.zoom.gain.detection_gains`. A matched pair's or coarse-only
item's gain goes to its coarse box; a fine-only item goes to the replaced
coarse box that overlaps it most (IoU >= ``fine_only_iou``), else nowhere
(an object the coarse pass did not see at all cannot be predicted from
coarse detections). A box replaced by several candidate windows gets the
mean over them.

State builders turn per-detection gains into a :class:`~zoomdet.zoom.windows.GainMap`:
``RNetGain`` (learned), ``EntropyGain`` (the paper's "ER" baseline: binary
entropy of the coarse score) and ``oracle_gain_map`` (the true labels).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Protocol

import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from zoomdet.types import Detections
from zoomdet.zoom.gain import window_gain_items
from zoomdet.zoom.merge import intersection_over_self
from zoomdet.zoom.windows import GainMap, window_boxes

__all__ = ["RNetConfig", "RNet", "rnet_inputs", "coarse_gain_targets", "window_true_gains", "window_predicted_gains",
           "RNET_TARGETS", "window_cover", "window_ap_targets", "GainModel", "RNetGain", "EntropyGain", "oracle_gain_map", "save_rnet"]


RNET_TARGETS = ("gain", "ap")


@dataclass
class RNetConfig:
    """R-net architecture and training options."""

    target: str = "gain"
    """What the R-net learns. ``gain``: the paper's per-detection gain labels (Eq. 1-2). ``ap``: per-detection
    values whose sum over each cached window (each box's share inside it, as the AG map spreads it) fits the
    AP points that window alone adds to its image (:func:`window_ap_targets`); the greedy stop rule then reads
    AP points."""

    hidden: int = 128
    """Width of the hidden fully connected layer."""
    extra_inputs: bool = True
    """Append score, log2 width and log2 height of the box to the RoI features."""
    epochs: int = 300
    """Full-batch Adam steps."""
    lr: float = 3e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.25
    """Held-out share of the cache's images (when no separate validation cache is given)."""
    drop_ios: float = 0.5
    """Which coarse boxes a window replaces (must match the merge rule)."""
    coarse_min_px: Optional[float] = None
    """The merge rule's ``coarse_min_px`` (must match it too); ``None``: the cache's own zoom config's."""
    fine_only_iou: float = 0.1
    """A fine-only gain is credited to a replaced coarse box overlapping it at least this much."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.target not in RNET_TARGETS:
            raise ValueError(f"R-net target must be one of {', '.join(RNET_TARGETS)}, got {self.target!r}")
        if self.hidden < 1 or self.epochs < 1:
            raise ValueError(f"hidden and epochs must be >= 1, got {self.hidden} and {self.epochs}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got {self.lr} and {self.weight_decay}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0 < self.drop_ios <= 1 or not 0 <= self.fine_only_iou <= 1:
            raise ValueError(f"drop_ios must be in (0, 1] and fine_only_iou in [0, 1], got {self.drop_ios} and "
                             f"{self.fine_only_iou}")


def rnet_inputs(det: Detections, extra: bool = True) -> Tensor:
    """``Tensor[N, D (+3)]`` float32 R-net input of coarse detections (needs RoI features)."""
    if det.features is None:
        raise ValueError("the R-net needs RoI features; use an R-CNN detector (tiny_frcnn or fasterrcnn_*)")
    x = det.features.float()
    if extra:
        wh = (det.boxes[:, 2:] - det.boxes[:, :2]).clamp(min=1.0)
        x = torch.cat([x, det.scores[:, None], torch.log2(wh) / 4.0], dim=1)
    return x


class RNet(nn.Module):
    """Two fully connected layers: ``Tensor[N, in_dim]`` -> ``Tensor[N]`` predicted gain."""

    def __init__(self, in_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


def coarse_gain_targets(rec, drop_ios: float = 0.5, fine_only_iou: float = 0.1,
                        coarse_min_px: Optional[float] = None) -> Tensor:
    """Gain label of each coarse detection of a cache record (``Tensor[Nc]``; see module docstring)."""
    n = len(rec.coarse)
    sums, counts = torch.zeros(n), torch.zeros(n)
    for k in range(rec.num_candidates):
        idx, items = window_gain_items(rec.coarse, rec.fine[k], rec.windows[k], rec.gt_boxes, rec.gt_labels,
                                       rec.gt_crowd, drop_ios, coarse_min_px)
        if len(idx) == 0:
            continue
        per = torch.zeros(len(idx))
        has = items.coarse_index >= 0
        per.index_add_(0, items.coarse_index[has], items.gains[has])
        fo = ~has
        if fo.any():
            iou = box_iou(items.boxes[fo], rec.coarse.boxes[idx])
            best, arg = iou.max(dim=1)
            ok = best >= fine_only_iou
            per.index_add_(0, arg[ok], items.gains[fo][ok])
        sums[idx] += per
        counts[idx] += 1
    return sums / counts.clamp(min=1)


def window_true_gains(rec, drop_ios: float = 0.5, coarse_min_px: Optional[float] = None) -> Tensor:
    """True gain of each candidate window (``Tensor[K]``): the sum of its gain items."""
    return torch.tensor([window_gain_items(rec.coarse, rec.fine[k], rec.windows[k], rec.gt_boxes, rec.gt_labels,
                                           rec.gt_crowd, drop_ios, coarse_min_px)[1].total()
                         for k in range(rec.num_candidates)])


def window_predicted_gains(rec, gains: Tensor) -> Tensor:
    """Predicted gain of each candidate window: its sum on the AG map of ``gains``."""
    gm = GainMap(rec.width, rec.height, rec.coarse.boxes, gains)
    return torch.from_numpy(gm.window_sums(window_boxes(rec.windows[:rec.num_candidates]))).float()


def window_cover(boxes: Tensor, windows) -> Tensor:
    """``Tensor[K, N]`` float32: the share of each box (xyxy pixels) inside each window, as the AG map spreads a
    detection's gain uniformly over its box; a window's map sum is ``window_cover(boxes, windows) @ gains``."""
    if len(boxes) == 0 or len(windows) == 0:
        return torch.zeros(len(windows), len(boxes))
    # the gain map divides a gain by its box's area floored at 1 px², so the share is floored the same way
    return intersection_over_self(boxes.float(), torch.from_numpy(window_boxes(windows)).float(), area_floor=1.0).T


def window_ap_targets(rec, merge, candidates_only: bool = False) -> Tensor:
    """``Tensor[K]`` float32: AP points each cached window of ``rec`` adds when zoomed alone (NaN on an image
    without objects); ``merge``: the cache's :class:`~zoomdet.zoom.merge.MergeConfig`. ``candidates_only``:
    the unshifted candidate windows only (``rec.windows[:rec.num_candidates]``)."""
    from zoomdet.zoom.gain import window_ap_gains

    k = rec.num_candidates if candidates_only else len(rec.windows)
    return torch.from_numpy(window_ap_gains(rec.coarse, rec.fine[:k], rec.windows[:k], rec.gt_boxes, rec.gt_labels,
                                            rec.gt_crowd, rec.width, rec.height, merge)).float()


class GainModel(Protocol):
    """A state builder: a gain per coarse detection (its AG map spreads them over boxes)."""

    name: str

    def predict(self, coarse: Detections) -> Tensor: ...


class EntropyGain:
    """The paper's "ER" state: binary entropy (bits) of each coarse score.

    With ``max_side`` (full-image pixels), only the boxes whose side √(w·h) is at most that keep their entropy
    (the others get 0): the objects small enough for the zoomed pass to see better than the coarse one."""

    name = "entropy"

    def __init__(self, max_side: Optional[float] = None) -> None:
        if max_side is not None and not max_side > 0:
            raise ValueError(f"max_side must be > 0 or None, got {max_side}")
        self.max_side = max_side

    def predict(self, coarse: Detections) -> Tensor:
        """``Tensor[N] float32``: the gain of each of the ``N`` coarse detections, bits."""
        p = coarse.scores.clamp(1e-6, 1 - 1e-6)
        h = -(p * torch.log2(p) + (1 - p) * torch.log2(1 - p))
        if self.max_side is not None:
            wh = (coarse.boxes[:, 2:] - coarse.boxes[:, :2]).clamp(min=0)
            h = h * ((wh[:, 0] * wh[:, 1]).sqrt() <= self.max_side)
        return h


class RNetGain:
    """A trained R-net as a state builder (stateless per call)."""

    name = "rnet"

    def __init__(self, model: RNet, cfg: RNetConfig, detector_id: str) -> None:
        self.model = model.eval()
        self.cfg = cfg
        self.detector_id = detector_id

    @torch.inference_mode()
    def predict(self, coarse: Detections) -> Tensor:
        if len(coarse) == 0:
            return torch.zeros(0)
        return self.model(rnet_inputs(coarse, self.cfg.extra_inputs))

    @classmethod
    def from_checkpoint(cls, path: str | Path, expect_detector: Optional[str] = None) -> "RNetGain":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"R-net checkpoint not found: {path}; train one with zoomdet rnet train")
        p = torch.load(path, map_location="cpu", weights_only=True)
        if "rnet_config" not in p:
            raise ValueError(f"{path} is not a ZoomDet R-net checkpoint")
        trained_on = p.get("detector_id")  # R-nets from before detector ids recorded the weights' digest only
        if expect_detector and trained_on != expect_detector:
            raise ValueError(f"R-net {path} was trained on features of detector {trained_on or p.get('detector_checkpoint_id')}"
                             f", not {expect_detector} (other weights or model settings); train an R-net from a cache "
                             f"of this detector")
        cfg = RNetConfig(**p["rnet_config"])
        model = RNet(int(p["in_dim"]), cfg.hidden)
        model.load_state_dict(p["state_dict"])
        return cls(model, cfg, trained_on or p.get("detector_checkpoint_id", "unknown"))


def save_rnet(path: str | Path, model: RNet, cfg: RNetConfig, in_dim: int, detector_id: str, metrics: dict) -> None:
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"state_dict": model.state_dict(), "rnet_config": asdict(cfg), "in_dim": in_dim,
                "detector_id": detector_id,
                "metrics": {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not math.isnan(v)}}, tmp)
    os.replace(tmp, path)


def oracle_gain_map(rec, drop_ios: float = 0.5, coarse_min_px: Optional[float] = None) -> GainMap:
    """The oracle state of a cache record: true per-detection gains spread over their boxes."""
    return GainMap(rec.width, rec.height, rec.coarse.boxes, coarse_gain_targets(rec, drop_ios, coarse_min_px=coarse_min_px))
