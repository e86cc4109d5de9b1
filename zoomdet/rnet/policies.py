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
from zoomdet.zoom.windows import GainMap

__all__ = ["GreedyPolicy"]


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
        best, best_score = None, 0.0
        for i in np.flatnonzero(state.available):
            w = state.candidates[i]
            g = gm.window_sum(w)
            score = g / w.source_pixels if self.per_pixel else g
            if g > 0 and (best is None or score > best_score):
                best, best_score = int(i), score
        return best
