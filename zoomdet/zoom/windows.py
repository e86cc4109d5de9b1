"""Candidate zoom windows, the accuracy-gain map, and window refinement.

Pure functions over integer pixel windows of the full-resolution image.

* :func:`candidate_windows`: the Dynamic Zoom-in Network's action set, a
  ``2x2`` grid of large windows and a ``3x3`` grid of small ones, overlapping
  and covering the image (configurable).
* :class:`GainMap`: a per-pixel accuracy-gain map with an integral image, so
  the gain inside any window costs O(1).
* :func:`refine_window`: paper Eq. 6, shift a window by up to ±μ of its size
  to where it covers the most gain, keeping its size and staying inside the
  image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from torch import Tensor

from zoomdet.types import Window

__all__ = ["WindowConfig", "candidate_windows", "GainMap", "refine_window", "refinement_windows"]


@dataclass
class WindowConfig:
    """The candidate windows (actions) of the zoom engine."""

    grids: list[int] = field(default_factory=lambda: [2, 3])
    """Grid sizes, e.g. ``[2, 3]``: a 2x2 grid of large windows and a 3x3 grid of small ones."""
    fractions: list[float] = field(default_factory=lambda: [0.55, 0.4])
    """Window side as a fraction of the image side, one per grid (``[0.55, 0.4]``)."""
    align: int = 32
    """Window sides are rounded down to a multiple of this (the model pads inputs to 32)."""
    refine_shift: float = 0.1
    """μ of paper Eq. 6: largest refinement shift, as a fraction of the window side (0 disables)."""
    refine_steps: int = 2
    """Positions tried per direction and axis: offsets ``k/refine_steps * μ`` for ``|k| <= refine_steps``."""

    def __post_init__(self) -> None:
        if len(self.grids) != len(self.fractions):
            raise ValueError(f"grids {self.grids} and fractions {self.fractions} must have the same length")
        for g, f in zip(self.grids, self.fractions):
            if g < 1 or not (0 < f <= 1) or g * f < 1:
                raise ValueError(f"a {g}x{g} grid of windows of side {f} cannot cover the image (need grid * fraction >= 1)")


def _grid_starts(extent: int, size: int, n: int) -> list[int]:
    if n == 1:
        return [(extent - size) // 2]
    return [round(i * (extent - size) / (n - 1)) for i in range(n)]


def candidate_windows(width: int, height: int, cfg: Optional[WindowConfig] = None) -> list[Window]:
    """The candidate windows of a ``width`` x ``height`` image, large grids first.

    Each grid of ``n x n`` windows of side ``fraction * image side`` is spread
    evenly so the first window touches the top-left corner and the last the
    bottom-right; neighbours overlap by ``(n * fraction - 1) / (n - 1)`` of the
    image side. Window sides are rounded down to ``cfg.align`` pixels when the
    image is large enough. Scale is 1 (full resolution).
    """
    cfg = cfg or WindowConfig()
    out: list[Window] = []
    for n, frac in zip(cfg.grids, cfg.fractions):
        ww, wh = int(width * frac), int(height * frac)
        if cfg.align > 1:
            # round up to the alignment so the grid still covers the image, but never past it
            ww = min(width, -(-ww // cfg.align) * cfg.align)
            wh = min(height, -(-wh // cfg.align) * cfg.align)
        for y in _grid_starts(height, wh, n):
            for x in _grid_starts(width, ww, n):
                out.append(Window(x, y, x + ww, y + wh, 1.0))
    return out


class GainMap:
    """Per-pixel accuracy gain of an image, with an integral image.

    Each item's gain is spread uniformly over its box (gain / box area) and
    summed, at full-image size: ``values[y, x]`` is gain per pixel (float32).
    Box bounds are rounded outward to whole pixels. ``integral`` (float64,
    ``(H + 1) x (W + 1)``) makes any window's sum O(1).

    Args:
        width, height: image size, pixels.
        boxes: ``Tensor[N, 4]`` xyxy pixels.
        gains: ``Tensor[N]`` gain of each box (any sign).
    """

    def __init__(self, width: int, height: int, boxes: Tensor, gains: Tensor) -> None:
        self.width, self.height = int(width), int(height)
        diff = np.zeros((self.height + 1, self.width + 1), dtype=np.float64)
        if len(boxes):
            b = boxes.detach().cpu().double().numpy()
            x0 = np.clip(np.floor(b[:, 0]), 0, self.width).astype(int)
            y0 = np.clip(np.floor(b[:, 1]), 0, self.height).astype(int)
            x1 = np.clip(np.ceil(b[:, 2]), 0, self.width).astype(int)
            y1 = np.clip(np.ceil(b[:, 3]), 0, self.height).astype(int)
            x1 = np.maximum(x1, np.minimum(x0 + 1, self.width))
            y1 = np.maximum(y1, np.minimum(y0 + 1, self.height))
            area = np.maximum((x1 - x0) * (y1 - y0), 1)
            v = gains.detach().cpu().double().numpy() / area
            valid = (x1 > x0) & (y1 > y0)
            x0, y0, x1, y1, v = x0[valid], y0[valid], x1[valid], y1[valid], v[valid]
            np.add.at(diff, (y0, x0), v)
            np.add.at(diff, (y0, x1), -v)
            np.add.at(diff, (y1, x0), -v)
            np.add.at(diff, (y1, x1), v)
        np.cumsum(diff, axis=0, out=diff)
        np.cumsum(diff, axis=1, out=diff)
        self.values = diff[: self.height, : self.width].astype(np.float32)
        integral = np.zeros((self.height + 1, self.width + 1), dtype=np.float64)
        np.cumsum(self.values, axis=0, out=integral[1:, 1:])
        np.cumsum(integral[1:, 1:], axis=1, out=integral[1:, 1:])
        self.integral = integral
        self._positive = float(np.maximum(self.values, 0).sum(dtype=np.float64))

    def window_sum(self, window: Window) -> float:
        """Total gain inside ``window`` (O(1))."""
        I = self.integral
        return float(I[window.y1, window.x1] - I[window.y0, window.x1] - I[window.y1, window.x0] + I[window.y0, window.x0])

    def total(self) -> float:
        return float(self.integral[-1, -1])

    def positive_total(self) -> float:
        """Sum of the positive part of the map (the paper's stop rule uses the remaining gain); O(1)."""
        return max(self._positive, 0.0)

    def zero_(self, window: Window) -> "GainMap":
        """Set ``window`` to zero in place (the paper's state update after zooming) and return ``self``.

        The integral is updated from the window's own local integral, so the
        cost is one pass over the window plus additions to the part of the
        integral right of and below it, not a full re-integration.
        """
        x0, y0, x1, y1 = window.x0, window.y0, min(window.x1, self.width), min(window.y1, self.height)
        patch = self.values[y0:y1, x0:x1]
        local = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=np.float64)
        np.cumsum(patch, axis=0, out=local[1:, 1:])
        np.cumsum(local[1:, 1:], axis=1, out=local[1:, 1:])
        self._positive -= float(np.maximum(patch, 0).sum(dtype=np.float64))
        I = self.integral
        I[y0:y1 + 1, x0:x1 + 1] -= local
        I[y1 + 1:, x0:x1 + 1] -= local[-1][None, :]
        I[y0:y1 + 1, x1 + 1:] -= local[:, -1][:, None]
        I[y1 + 1:, x1 + 1:] -= local[-1, -1]
        patch[...] = 0.0
        return self

    def zeroed(self, window: Window) -> "GainMap":
        """A copy with ``window`` set to zero; the original is unchanged."""
        new = object.__new__(GainMap)
        new.width, new.height = self.width, self.height
        new.values, new.integral, new._positive = self.values.copy(), self.integral.copy(), self._positive
        return new.zero_(window)


def refinement_windows(window: Window, width: int, height: int, cfg: Optional[WindowConfig] = None) -> list[Window]:
    """Every position refinement can move ``window`` to, the unshifted window first.

    Offsets ``(dx, dy) = (i, j) / refine_steps * μ * (width, height)`` for
    integers ``|i|, |j| <= refine_steps``, ordered by ``|i| + |j|``; positions
    are clamped inside the image and duplicates dropped. This is the set the
    rollout cache stores fine detections for.
    """
    cfg = cfg or WindowConfig()
    if cfg.refine_shift <= 0 or cfg.refine_steps <= 0:
        return [window]
    ks = range(-cfg.refine_steps, cfg.refine_steps + 1)
    offsets = sorted(((i, j) for j in ks for i in ks), key=lambda ij: (abs(ij[0]) + abs(ij[1]), ij[1], ij[0]))
    out: list[Window] = []
    for i, j in offsets:
        dx = round(i / cfg.refine_steps * cfg.refine_shift * window.width)
        dy = round(j / cfg.refine_steps * cfg.refine_shift * window.height)
        x0 = min(max(window.x0 + dx, 0), width - window.width)
        y0 = min(max(window.y0 + dy, 0), height - window.height)
        cand = Window(x0, y0, x0 + window.width, y0 + window.height, window.scale)
        if cand not in out:
            out.append(cand)
    return out


def refine_window(window: Window, gain: GainMap, cfg: Optional[WindowConfig] = None) -> Window:
    """Paper Eq. 6: the position in :func:`refinement_windows` that covers the most gain.

    Size and scale are unchanged and the window stays inside the image; ties
    keep the smallest shift (the original window first).
    """
    best, best_gain = window, gain.window_sum(window)
    for cand in refinement_windows(window, gain.width, gain.height, cfg)[1:]:
        g = gain.window_sum(cand)
        if g > best_gain + 1e-9:
            best, best_gain = cand, g
    return best
