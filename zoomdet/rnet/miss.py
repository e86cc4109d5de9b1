"""Where did the coarse pass miss objects? A dense map read from the coarse pass's own features.

Every state the rules and agents read is built from the coarse detections; an object the coarse pass did not box
at all leaves nothing there. A *miss map* is a small convolutional head (:class:`MissHead`) on the detector's
FPN levels 0 and 1 of the coarse view, trained on images the detector never saw to mark the cells covered by
ground-truth objects no coarse box found (``benchmarks/miss_map.py`` trains and scores one; its checkpoint
records the detector id and the coarse scale it reads).

The policy ``greedy-entropy+miss`` (:class:`EntropyMissPolicy`, ``policies.miss_map: PATH`` and
``policies.miss_beta``) is ``greedy-entropy`` with that map added to the ranking: each allowed window scores
``e / e_max + beta * m / m_max``, ``e`` and ``m`` the entropy and the miss map's probability mass it holds per
source pixel, ``e_max`` and ``m_max`` their largest values over the candidates at the episode's start; both maps
are zeroed where zoomed, and the engine refines each pick on the entropy map as it does ``greedy-entropy``'s. It
stops where the entropy map's positive total falls under ``greedy_stop`` (as ``greedy-entropy``), or when no
window holds anything on either map. The map reads the same coarse pixels as the coarse pass, so it adds no
pixels, and the engine takes the coarse view's backbone maps from the coarse pass's own forward
(:meth:`~zoomdet.detector.detector.Detector.detect_with_maps`; a tiled coarse view runs the backbone once more,
:meth:`~zoomdet.detector.detector.Detector.feature_maps`); the head's time is in the answer's ``gain`` stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoomdet.rnet.model import EntropyGain
from zoomdet.rnet.policies import GreedyPolicy, greedy_choice
from zoomdet.zoom.windows import GainMap, window_boxes

__all__ = ["LEVELS", "MissHead", "MissMap", "MissRanking", "EntropyMissPolicy", "level_stack", "cell_boxes",
           "probs_gain_map", "density_scales", "blend"]

LEVELS = ("0", "1")
"""FPN levels read: stride 4 and 8 of the coarse input; level 1 is upsampled to level 0's grid."""
CHECKPOINT_KIND = "zoomdet-miss-map"


class MissHead(nn.Module):
    """Logit of "an object the coarse pass missed covers this cell", per cell of FPN level 0.

    Input ``float32[B, 2 * C, h, w]`` (levels 0 and 1, C channels each); output ``float32[B, h, w]`` logits."""

    def __init__(self, in_channels: int, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=2, dilation=2), nn.ReLU(),
            nn.Conv2d(hidden, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)[:, 0]

    @torch.inference_mode()
    def probs(self, stack: Tensor) -> Tensor:
        """``float32[h, w]``: the probabilities of one image's :func:`level_stack` ``float32[2 * C, h, w]``."""
        return torch.sigmoid(self(stack[None]))[0]


def level_stack(maps: dict[str, Tensor]) -> Tensor:
    """``float32[2 * C, h, w]``: :data:`LEVELS` of ``maps`` (:meth:`Detector.feature_maps`) on level 0's cells,
    level 1 repeated over the 2 x 2 cells each of its cells covers."""
    f0, f1 = maps[LEVELS[0]], maps[LEVELS[1]]
    up = F.interpolate(f1[None], scale_factor=2, mode="nearest")[0, :, :f0.shape[-2], :f0.shape[-1]]
    return torch.cat([f0, up], 0)


def cell_boxes(shape: tuple[int, int], cell: tuple[float, float]) -> Tensor:
    """``float32[h * w, 4]``: each cell's box (xyxy full-image pixels), row by row."""
    h, w = shape
    jj, ii = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    x0, y0 = ii.flatten() * cell[0], jj.flatten() * cell[1]
    return torch.stack([x0, y0, x0 + cell[0], y0 + cell[1]], 1).float()


def probs_gain_map(probs: Tensor, cell: tuple[float, float], width: int, height: int, grid: int = 4) -> GainMap:
    """The miss map as a :class:`~zoomdet.zoom.windows.GainMap` of the ``width`` x ``height`` image: each cell's
    probability (``probs float32[h, w]``, cells of ``cell`` full-image pixels) spread over its area, on an
    integral grid of ``grid`` px (4: exact for map cells that are multiples of 4 px)."""
    return GainMap.from_grid(width, height, probs, cell, cell=grid)  # the cells of cell_boxes, separably


def density_scales(entropy_sums: np.ndarray, miss_sums: np.ndarray, pixels: np.ndarray) -> tuple[float, float]:
    """``(e_max, m_max)``: the largest entropy and miss mass per pixel over the windows (``float64[K]`` sums and
    source pixels), each at least 1e-12. ``entropy+miss@B`` ranks windows by ``e / e_max + B * m / m_max``."""
    return (max(float((entropy_sums / pixels).max()), 1e-12), max(float((miss_sums / pixels).max()), 1e-12))


class MissMap:
    """A trained :class:`MissHead` and the detector and coarse scale it reads.

    Args:
        path: a checkpoint written by ``benchmarks/miss_map.py``.
        detector_id: the id of the detector it will read (``None``: not checked); another detector's id than the
            one it was trained on raises ``ValueError``.
        coarse_scale: the engine's ``zoom.coarse_scale`` (``None``: not checked); another scale raises too.
    """

    def __init__(self, path: str | Path, detector_id: Optional[str] = None,
                 coarse_scale: Optional[float] = None) -> None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"miss map checkpoint not found: {path}")
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(ckpt, dict) or ckpt.get("kind") != CHECKPOINT_KIND:
            raise ValueError(f"{path} is not a miss map checkpoint (benchmarks/miss_map.py)")
        if detector_id is not None and ckpt["detector_id"] != detector_id:
            raise ValueError(f"{path} was trained on detector {ckpt['detector_id']}, not {detector_id}")
        self.coarse_scale = float(ckpt["coarse_scale"])
        if coarse_scale is not None and self.coarse_scale != float(coarse_scale):
            raise ValueError(f"{path} reads the coarse view at {self.coarse_scale}, not at {coarse_scale}")
        self.path, self.detector_id = str(path), ckpt["detector_id"]
        self.head = MissHead(ckpt["in_channels"], ckpt["hidden"])
        self.head.load_state_dict(ckpt["state_dict"])
        self.head.eval()
        self.meta = {k: v for k, v in ckpt.items() if k != "state_dict"}

    def probs(self, maps: dict[str, Tensor]) -> Tensor:
        """``float32[h, w]``: the probability that a missed object covers each level-0 cell of ``maps``."""
        return self.head.probs(level_stack(maps))

    def gain_map(self, maps: dict[str, Tensor], cell: tuple[float, float], width: int, height: int,
                 grid: int = 4) -> GainMap:
        """The map of a ``width`` x ``height`` image as a :class:`GainMap` (:func:`probs_gain_map`)."""
        return probs_gain_map(self.probs(maps), cell, width, height, grid)


class MissRanking:
    """What ``greedy-entropy+miss`` ranks on in one episode: ``window_sums`` of ``e / e_max + beta * m / m_max``
    over the current entropy and miss maps, for :func:`~zoomdet.rnet.policies.greedy_choice`.

    ``e_max`` and ``m_max`` (:func:`density_scales`) are taken over the candidates (``boxes``, ``pixels``) at the
    episode's start. The caller zeroes the entropy map where zoomed (the engine or the environment owns it);
    :meth:`sync` zeroes the miss map likewise."""

    def __init__(self, entropy: GainMap, miss: GainMap, boxes: np.ndarray, pixels: np.ndarray, beta: float) -> None:
        self.entropy, self.miss, self.beta, self.zeroed = entropy, miss, beta, 0
        self.e_max, self.m_max = density_scales(entropy.window_sums(boxes), miss.window_sums(boxes), pixels)

    def sync(self, zoomed) -> None:
        """Zero the miss map over the windows of ``zoomed`` (every window zoomed so far, in order) not yet zeroed."""
        for window in zoomed[self.zeroed:]:
            self.miss.zero_(window)
        self.zeroed = len(zoomed)

    def window_sums(self, boxes: np.ndarray) -> np.ndarray:
        return blend(self.entropy.window_sums(boxes), self.miss.window_sums(boxes), (self.e_max, self.m_max),
                     self.beta)


def blend(entropy: np.ndarray, miss: np.ndarray, scales: tuple[float, float], beta: float) -> np.ndarray:
    """``float64[K]``: ``greedy-entropy+miss``'s window score ``e / e_max + beta * m / m_max`` of the windows'
    entropy and miss-map sums (``float64[K]`` each), ``scales`` = ``(e_max, m_max)`` (:func:`density_scales`)."""
    return entropy / scales[0] + beta * miss / scales[1]


class EntropyMissPolicy(GreedyPolicy):
    """``greedy-entropy+miss``: ``greedy-entropy`` with a miss map added to its ranking (module docstring). It is
    :class:`~zoomdet.rnet.policies.GreedyPolicy` on the entropy map (which the engine refines and zeroes, and whose
    positive total stops it), ranking the allowed windows by :class:`MissRanking` instead of that map alone.

    Args:
        miss: the :class:`MissMap` (checked against the engine's detector and coarse scale by its builder).
        beta: the miss map's weight, > 0.
        stop_gain: ``greedy-entropy``'s stop on the entropy map (``policies.greedy_stop``).
        entropy_max_side: as ``policies.entropy_max_side``.
    """

    reads_coarse_features = True  # the engine keeps the coarse pass's backbone maps for state.coarse_features

    def __init__(self, miss: MissMap, beta: float = 1.0, stop_gain: float = 0.1,
                 entropy_max_side: Optional[float] = None) -> None:
        if not beta > 0:
            raise ValueError(f"miss_beta must be > 0, got {beta}")
        beta = float(beta)
        # not "@beta": "@" separates a policy's name from its budget in the evaluator's rows
        super().__init__(EntropyGain(entropy_max_side), stop_gain,
                         name="greedy-entropy+miss" if beta == 1 else f"greedy-entropy+miss-b{beta:g}")
        self.miss, self.beta = miss, beta

    def gain_map(self, state) -> GainMap:
        """The entropy map (``greedy-entropy``'s); the miss map and both scales go in ``state.memory``."""
        if state.coarse_features is None:
            raise ValueError(f"policy {self.name!r} needs the engine's coarse_features")
        entropy = super().gain_map(state)
        maps, cell = state.coarse_features()
        miss = self.miss.gain_map(maps, cell, state.width, state.height, grid=entropy.cell)
        boxes = window_boxes(state.candidates)
        pixels = np.array([w.source_pixels for w in state.candidates], dtype=np.float64)
        state.memory.update(miss_ranking=MissRanking(entropy, miss, boxes, pixels, self.beta), miss_boxes=boxes,
                            miss_pixels=pixels)
        return entropy

    def select(self, state) -> Optional[int]:
        mem = state.memory
        ranking = mem["miss_ranking"]
        ranking.sync(state.zoomed_windows)  # the engine zeroed the entropy map already
        if state.gain.positive_total() < self.stop_gain:
            return None
        return greedy_choice(ranking, mem["miss_boxes"], mem["miss_pixels"], state.available)
