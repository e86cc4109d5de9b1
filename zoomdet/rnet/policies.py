"""Policies that act on the accuracy-gain map without RL.

``greedy`` ("GS+Rnet" in the paper) and ``greedy-entropy`` take, at each step,
the available candidate window with the largest predicted gain per pixel,
and stop when the remaining positive gain on the map falls under
``stop_gain`` (the paper's rule, 0.1), when no window has positive predicted
gain, or when the engine's budget leaves no window. The engine refines the
chosen window on the same map (Eq. 6) and zeroes it afterwards.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from zoomdet.rnet.model import GainModel
from zoomdet.zoom.engine import EpisodeState
from zoomdet.zoom.windows import GainMap, window_boxes

__all__ = ["GreedyPolicy", "greedy_choice"]


class GreedyPolicy:
    """Greedy on a gain map built by ``gain_model`` from the coarse detections.

    Args:
        gain_model: a state builder (:class:`~zoomdet.rnet.model.RNetGain`,
            :class:`~zoomdet.rnet.model.EntropyGain`).
        stop_gain: stop when the positive part of the remaining map sums to less.
        per_pixel: rank windows by gain per pixel (True) or by total gain.
    """

    needs_ground_truth = False

    def __init__(self, gain_model: GainModel, stop_gain: float = 0.1, per_pixel: bool = True,
                 name: Optional[str] = None) -> None:
        self.gain_model = gain_model
        self.stop_gain = float(stop_gain)
        self.per_pixel = per_pixel
        self.name = name or ("greedy" if gain_model.name == "rnet" else f"greedy-{gain_model.name}")

    def gain_map(self, state: EpisodeState) -> GainMap:
        return GainMap(state.width, state.height, state.coarse.boxes, self.gain_model.predict(state.coarse))

    def select(self, state: EpisodeState) -> Optional[int]:
        gm = state.gain
        assert gm is not None
        if gm.positive_total() < self.stop_gain:
            return None
        if "greedy_boxes" not in state.memory:  # once per episode: the candidates as arrays
            state.memory["greedy_boxes"] = window_boxes(state.candidates)
            state.memory["greedy_pixels"] = np.array([w.source_pixels for w in state.candidates], dtype=np.float64)
        return greedy_choice(gm, state.memory["greedy_boxes"], state.memory["greedy_pixels"], state.available,
                             self.per_pixel)


def greedy_choice(gain: GainMap, boxes: np.ndarray, pixels: np.ndarray, available: np.ndarray,
                  per_pixel: bool = True) -> Optional[int]:
    """Greedy's pick: the available window with the largest gain on ``gain`` (per pixel, or in total), among
    windows of positive gain; ``None`` when there is none.

    Args:
        gain: the current gain map (zoomed windows already zeroed).
        boxes: ``float64[K, 4]`` candidate windows, xyxy full-image pixels (:func:`window_boxes`).
        pixels: ``float64[K]`` their source pixels.
        available: ``bool[K]`` windows the budget and the zoom history still allow.
    """
    idx = np.flatnonzero(available)
    if not len(idx):
        return None
    g = gain.window_sums(boxes[idx])  # one vectorized pass over the integral image
    score = g / pixels[idx] if per_pixel else g
    score = np.where(g > 0, score, -np.inf)
    k = int(np.argmax(score))  # the first of equal scores, as a loop in candidate order would keep
    return int(idx[k]) if np.isfinite(score[k]) else None
