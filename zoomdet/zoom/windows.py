"""Candidate zoom windows, the accuracy-gain map, and window refinement.

Pure functions over integer pixel windows of the full-resolution image.

* :func:`candidate_windows`: the Dynamic Zoom-in Network's action set, a
  ``2x2`` grid of large windows and a ``3x3`` grid of small ones, overlapping
  and covering the image (configurable).
* :class:`GainMap`: the accuracy-gain map on a grid of small cells with an
  integral image, so the gain inside a window is cheap to sum, zero and pool.
* :func:`split_window`: a window too large for one detector pass as
  overlapping tiles at the same scale (the engine's ``max_pass_pixels``).
* :func:`scene_frames`, :func:`frame_cores`: a scene larger than the engine's
  ``frame_size`` as overlapping frames, one zoom episode each, and the part of
  each frame whose detections the scene keeps.
* :func:`refine_window`: paper Eq. 6, shift a window by up to ±μ of its size
  to where it covers the most gain, keeping its size and staying inside the
  image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from torch import Tensor

from zoomdet.types import Window

__all__ = ["WindowConfig", "candidate_windows", "GainMap", "refine_window", "refinement_windows", "split_window",
           "window_boxes", "scene_frames", "frame_cores"]


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


def split_window(window: Window, max_input_pixels: int, overlap: float = 0.1) -> list[Window]:
    """``window`` as the fewest ``rows x cols`` overlapping tiles at its scale whose detector input is at most
    ``max_input_pixels`` each; ``[window]`` when it already fits.

    Neighbouring tiles share ``overlap`` of a tile's side (source pixels), so an object cut by one tile's
    edge is whole in the next one as long as it is smaller than that share. The tiles cover the window
    exactly and stay inside it.

    Args:
        window: the pass to split (source pixels, any scale).
        max_input_pixels: largest detector input of one tile, pixels (after the window's resize).
        overlap: fraction of a tile's side shared with its neighbour, in ``[0, 0.5)``.
    """
    if max_input_pixels < 1024:
        raise ValueError(f"max_input_pixels must be >= 1024 (a 32x32 input), got {max_input_pixels}")
    if not 0 <= overlap < 0.5:
        raise ValueError(f"overlap must be in [0, 0.5), got {overlap}")
    if window.input_pixels <= max_input_pixels:
        return [window]

    def tile_side(extent: int, n: int) -> int:  # n tiles of this side, overlapping by `overlap`, cover extent
        return extent if n == 1 else int(np.ceil(extent / (n - (n - 1) * overlap)))

    def fits(rows: int, cols: int) -> bool:
        return Window(0, 0, tile_side(window.width, cols), tile_side(window.height, rows), window.scale).input_pixels \
            <= max_input_pixels

    def squareness(rows: int, cols: int) -> float:  # 1 for a square tile; a long strip would cut more objects
        th, tw = tile_side(window.height, rows), tile_side(window.width, cols)
        return min(th, tw) / max(th, tw)

    # fewest tiles, then the squarest; a tile's input side never needs to exceed sqrt(cap) * 2
    limit = int(np.ceil(max(window.input_size) / np.sqrt(max_input_pixels) * 2)) + 1
    grids = [(r, c) for r in range(1, limit + 1) for c in range(1, limit + 1) if fits(r, c)]
    rows, cols = min(grids, key=lambda rc: (rc[0] * rc[1] * (1 if squareness(*rc) >= 0.5 else 4), -squareness(*rc)))
    th, tw = tile_side(window.height, rows), tile_side(window.width, cols)
    ys = [window.y0 + s for s in _grid_starts(window.height, th, rows)]
    xs = [window.x0 + s for s in _grid_starts(window.width, tw, cols)]
    return [Window(x, y, x + tw, y + th, window.scale) for y in ys for x in xs]


def _frame_axis(extent: int, size: int, overlap: int) -> tuple[list[int], int]:
    """Starts and side of the fewest frames of side ``<= size`` that cover ``extent`` with neighbours sharing
    ``>= overlap`` pixels."""
    if extent <= size:
        return [0], extent
    n = -(-(extent - overlap) // (size - overlap))
    side = min(size, -(-(extent + (n - 1) * overlap) // n))
    return _grid_starts(extent, side, n), side


def scene_frames(width: int, height: int, frame_size: int, overlap: int) -> list[Window]:
    """A ``width`` x ``height`` scene as the fewest overlapping frames of side at most ``frame_size``, row by row.

    Per axis, ``n`` frames of one side spread evenly from edge to edge, neighbours sharing at least ``overlap``
    pixels; an axis no longer than ``frame_size`` is one frame. Each frame is a zoom episode of its own (the
    engine's ``frame_size``); :func:`frame_cores` says which of its detections the scene keeps.

    Returns:
        Windows at scale 1.0, in scene pixels; ``[Window.full(width, height)]`` when the scene fits one frame.
    """
    if frame_size < 64 or not 0 <= overlap <= frame_size // 2:
        raise ValueError(f"frame_size must be >= 64 and overlap in [0, frame_size / 2], got {frame_size}, {overlap}")
    xs, w = _frame_axis(width, frame_size, overlap)
    ys, h = _frame_axis(height, frame_size, overlap)
    return [Window(x, y, x + w, y + h, 1.0) for y in ys for x in xs]


def frame_cores(frames: Sequence[Window]) -> np.ndarray:
    """``float64[F, 4]``: the part of each frame (xyxy, scene pixels) whose detections the scene keeps.

    The scene is cut at the middle of every overlap, so each point lies in exactly one core (a half-open
    box ``[x0, x1) x [y0, y1)``; the scene's right and bottom edges are in the last cores). A detection is kept
    from the frame whose core holds its box centre: an object narrower than the overlap is then whole in the
    frame that keeps it, so the scene answers as the frames do, with no object twice and none cut.
    """
    boxes = window_boxes(frames)
    cores = boxes.copy()
    for lo, hi in ((0, 2), (1, 3)):  # x, then y
        for i, f in enumerate(boxes):
            left = boxes[(boxes[:, lo] < f[lo]) & (boxes[:, hi] > f[lo]) & (boxes[:, hi] < f[hi])]
            right = boxes[(boxes[:, lo] > f[lo]) & (boxes[:, lo] < f[hi]) & (boxes[:, hi] > f[hi])]
            if len(left):
                cores[i, lo] = (f[lo] + left[:, hi].max()) / 2
            if len(right):
                cores[i, hi] = (f[hi] + right[:, lo].min()) / 2
        cores[boxes[:, lo] == boxes[:, lo].min(), lo] = -np.inf  # boxes reaching past the scene's edges stay too
        cores[boxes[:, hi] == boxes[:, hi].max(), hi] = np.inf
    return cores


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


def window_boxes(windows) -> np.ndarray:
    """``float64[K, 4]``: the xyxy full-image pixel boxes of ``windows`` (``[0, 4]`` for none), as
    :meth:`GainMap.window_sums` takes them."""
    return np.array([w.as_tuple() for w in windows], dtype=np.float64).reshape(-1, 4)


RESIDUE = 1e-12
"""Window sums within this fraction of a gain map's total absolute gain are rounding residue, read as 0."""


class GainMap:
    """Accuracy gain of an image on a grid of ``cell`` x ``cell`` pixel cells, with an integral image.

    Each item's gain is spread uniformly over its box (gain / box area) and
    summed. ``cells[j, i]`` (float64, ``ceil(H / cell) x ceil(W / cell)``) is
    the exact gain inside cell ``(j, i)``; ``integral`` holds the cumulative
    sums at cell corners. A window's sum interpolates the integral
    bilinearly, which is exact for windows on cell edges and treats the gain
    inside a cell as uniform otherwise. ``cell=1`` is the exact per-pixel map
    for integer windows; the default 16 px (much finer than the candidate
    windows and their refinement shifts, which are 60+ px) keeps building,
    refining and zeroing cheap (microseconds instead of milliseconds for a
    2048 x 1536 image), which the environment's step rate depends on.

    Args:
        width, height: image size, pixels.
        boxes: ``Tensor[N, 4]`` xyxy pixels.
        gains: ``Tensor[N]`` gain of each box (any sign).
        cell: cell side, pixels.
    """

    def __init__(self, width: int, height: int, boxes: Tensor, gains: Tensor, cell: int = 16) -> None:
        self._edges(width, height, cell)
        corner = np.zeros((len(self.ys), len(self.xs)), dtype=np.float64)
        if len(boxes):
            b = boxes.detach().cpu().double().numpy()
            x0, x1 = np.clip(b[:, 0], 0, self.width), np.clip(b[:, 2], 0, self.width)
            y0, y1 = np.clip(b[:, 1], 0, self.height), np.clip(b[:, 3], 0, self.height)
            w, h = np.maximum(x1 - x0, 1e-6), np.maximum(y1 - y0, 1e-6)
            density = gains.detach().cpu().double().numpy() / np.maximum((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), 1.0)
            # integral at corner (Y, X) = sum_n density_n * overlap_x_n(X) * overlap_y_n(Y): one matrix product
            fx = np.clip(self.xs[None, :] - x0[:, None], 0, w[:, None]) * ((x1 > x0)[:, None])
            fy = np.clip(self.ys[None, :] - y0[:, None], 0, h[:, None]) * ((y1 > y0)[:, None])
            corner = (fy * density[:, None]).T @ fx
        self.cells = np.diff(np.diff(corner, axis=0), axis=1)
        self._integrate()

    def _edges(self, width: int, height: int, cell: int) -> None:
        self.width, self.height, self.cell = int(width), int(height), max(1, int(cell))
        self.xs = np.minimum(np.arange(-(-self.width // self.cell) + 1) * self.cell, self.width).astype(np.float64)
        self.ys = np.minimum(np.arange(-(-self.height // self.cell) + 1) * self.cell, self.height).astype(np.float64)

    @classmethod
    def from_grid(cls, width: int, height: int, values: Tensor, size: tuple[float, float], cell: int = 16
                  ) -> "GainMap":
        """The map of a regular grid of boxes: ``values[j, i]`` (``Tensor[h, w]``, any float) is the gain of the box
        ``[i * size[0], j * size[1], (i + 1) * size[0], (j + 1) * size[1]]`` (full-image pixels), spread over it as
        the constructor spreads a box's gain (the part outside the image is lost). The same map as the constructor
        given those ``h * w`` boxes, up to float rounding, from two small matrix products, since a grid's overlaps
        with the integral's cells factor by axis (a 160 x 160 grid on a 2560 px image: about thirty times faster)."""
        self = cls.__new__(cls)
        self._edges(width, height, cell)
        v = values.detach().cpu().double().numpy() if isinstance(values, Tensor) else np.asarray(values, np.float64)

        def overlap(n: int, side: float, limit: int, edges: np.ndarray) -> np.ndarray:  # [n, len(edges)]
            lo = np.clip(np.arange(n) * float(side), 0, limit)
            hi = np.clip(np.arange(1, n + 1) * float(side), 0, limit)
            return np.clip(edges[None, :] - lo[:, None], 0, np.maximum(hi - lo, 1e-6)[:, None]) * (hi > lo)[:, None]

        density = v / max(float(size[0]) * float(size[1]), 1.0)
        corner = overlap(v.shape[0], size[1], self.height, self.ys).T @ density @ overlap(v.shape[1], size[0],
                                                                                          self.width, self.xs)
        self.cells = np.diff(np.diff(corner, axis=0), axis=1)
        self._integrate()
        return self

    def _integrate(self) -> None:
        integral = np.zeros((self.cells.shape[0] + 1, self.cells.shape[1] + 1), dtype=np.float64)
        np.cumsum(self.cells, axis=0, out=integral[1:, 1:])
        np.cumsum(integral[1:, 1:], axis=1, out=integral[1:, 1:])
        self.integral = integral
        self._positive = float(np.maximum(self.cells, 0).sum())
        self._scale = float(np.abs(self.cells).sum())  # bounds every |integral| value; zeroing never raises it

    def _coverage(self, lo: float, hi: float, edges: np.ndarray) -> tuple[int, np.ndarray]:
        """First cell index and covered fraction of each cell between pixel ``lo`` and ``hi`` on one axis."""
        i0 = min(int(lo // self.cell), len(edges) - 2)
        i1 = max(min(int(-(-hi // self.cell)), len(edges) - 1), i0 + 1)
        a, b = edges[i0:i1], edges[i0 + 1:i1 + 1]
        frac = np.clip(np.minimum(b, hi) - np.maximum(a, lo), 0, None) / np.maximum(b - a, 1e-9)
        return i0, frac

    def _integral_at(self, x: float, y: float) -> float:
        """Gain in ``[0, x) x [0, y)``: bilinear in the integral, exact when gain is uniform within each cell."""
        i = min(int(x // self.cell), len(self.xs) - 2)
        j = min(int(y // self.cell), len(self.ys) - 2)
        fx = (x - self.xs[i]) / (self.xs[i + 1] - self.xs[i])
        fy = (y - self.ys[j]) / (self.ys[j + 1] - self.ys[j])
        I = self.integral
        a, b, c, d = I[j, i], I[j, i + 1], I[j + 1, i], I[j + 1, i + 1]
        return float(a + fx * (b - a) + fy * (c - a) + fx * fy * (d - b - c + a))

    def window_sums(self, boxes: np.ndarray) -> np.ndarray:
        """``float64[K]``: :meth:`window_sum` of each row of ``boxes`` (``[K, 4]`` xyxy pixels), vectorized."""
        b = np.asarray(boxes, dtype=np.float64)
        x0, y0 = b[:, 0], b[:, 1]
        x1, y1 = np.minimum(b[:, 2], self.width), np.minimum(b[:, 3], self.height)
        x = np.concatenate([x1, x0, x1, x0])
        y = np.concatenate([y1, y1, y0, y0])
        i = np.minimum((x // self.cell).astype(np.intp), len(self.xs) - 2)
        j = np.minimum((y // self.cell).astype(np.intp), len(self.ys) - 2)
        fx = (x - self.xs[i]) / (self.xs[i + 1] - self.xs[i])
        fy = (y - self.ys[j]) / (self.ys[j + 1] - self.ys[j])
        I = self.integral
        a, bb, c, d = I[j, i], I[j, i + 1], I[j + 1, i], I[j + 1, i + 1]
        v = (a + fx * (bb - a) + fy * (c - a) + fx * fy * (d - bb - c + a)).reshape(4, -1)
        return self._snap(v[0] - v[1] - v[2] + v[3])

    def _snap(self, sums):
        """``sums`` with the integral's rounding residue set to 0: window sums within :data:`RESIDUE` of the map's
        total absolute gain, which bounds every integral value. Zeroing a window leaves residues of about 1e-16 of
        the map's total in it, of either sign and depending on the order of float operations (thread counts
        included), which would otherwise read as a window with a little gain left."""
        tol = RESIDUE * self._scale
        return np.where(np.abs(sums) <= tol, 0.0, sums)

    def window_sum(self, window: Window) -> float:
        """Total gain inside ``window`` (O(1))."""
        x0, y0 = window.x0, window.y0
        x1, y1 = min(window.x1, self.width), min(window.y1, self.height)
        f = self._integral_at
        return float(self._snap(f(x1, y1) - f(x0, y1) - f(x1, y0) + f(x0, y0)))

    def total(self) -> float:
        return float(self.integral[-1, -1])

    def positive_total(self) -> float:
        """Sum of the positive cells of the map (the paper's stop rule uses the remaining gain)."""
        return max(self._positive, 0.0)

    def _pool_weights(self, rows: int, cols: int):
        """Corner positions of a ``rows x cols`` grid in cell units (integer part, fraction), memoized per shape."""
        key = (rows, cols)
        cache = self.__dict__.setdefault("_pool_cache", {})
        if key not in cache:
            u = np.interp(np.linspace(0, self.width, cols + 1), self.xs, np.arange(len(self.xs)))
            v = np.interp(np.linspace(0, self.height, rows + 1), self.ys, np.arange(len(self.ys)))
            ui, vi = np.minimum(u.astype(int), len(self.xs) - 2), np.minimum(v.astype(int), len(self.ys) - 2)
            cache[key] = (ui, u - ui, vi, v - vi)
        return cache[key]

    def pooled(self, rows: int, cols: int) -> np.ndarray:
        """``float32[rows, cols]``: the gain inside each cell of a ``rows x cols`` grid over the image.

        Interpolates the integral bilinearly at the grid's corners, so it costs
        O(rows * cols) for any image size (the environment's observation)."""
        ui, du, vi, dv = self._pool_weights(rows, cols)
        I = self.integral
        top = I[vi][:, ui] * (1 - du) + I[vi][:, ui + 1] * du
        bottom = I[vi + 1][:, ui] * (1 - du) + I[vi + 1][:, ui + 1] * du
        corner = top * (1 - dv)[:, None] + bottom * dv[:, None]
        return np.diff(np.diff(corner, axis=0), axis=1).astype(np.float32)

    def zero_(self, window: Window) -> "GainMap":
        """Set ``window`` to zero in place (the paper's state update after zooming) and return ``self``.

        A cell the window covers partly keeps the uncovered share of its gain.
        The integral is updated from the block's own cumulative sums (only the
        part right of and below the window changes), not re-integrated."""
        x0, fx = self._coverage(window.x0, min(window.x1, self.width), self.xs)
        y0, fy = self._coverage(window.y0, min(window.y1, self.height), self.ys)
        x1, y1 = x0 + len(fx), y0 + len(fy)
        block = self.cells[y0:y1, x0:x1]
        delta = -block * (fy[:, None] * fx[None, :])
        self._positive += float(np.maximum(block + delta, 0).sum() - np.maximum(block, 0).sum())
        block += delta
        local = np.cumsum(np.cumsum(delta, axis=0), axis=1)
        I = self.integral
        I[y0 + 1:y1 + 1, x0 + 1:x1 + 1] += local
        I[y1 + 1:, x0 + 1:x1 + 1] += local[-1]
        I[y0 + 1:y1 + 1, x1 + 1:] += local[:, -1:]
        I[y1 + 1:, x1 + 1:] += local[-1, -1]
        return self

    def copy(self) -> "GainMap":
        new = object.__new__(GainMap)
        new.__dict__.update(self.__dict__)
        new.cells, new.integral = self.cells.copy(), self.integral.copy()
        return new

    def zeroed(self, window: Window) -> "GainMap":
        """A copy with ``window`` set to zero; the original is unchanged."""
        return self.copy().zero_(window)


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
    seen: set[tuple[int, int]] = set()
    for i, j in offsets:
        dx = round(i / cfg.refine_steps * cfg.refine_shift * window.width)
        dy = round(j / cfg.refine_steps * cfg.refine_shift * window.height)
        x0 = min(max(window.x0 + dx, 0), width - window.width)
        y0 = min(max(window.y0 + dy, 0), height - window.height)
        if (x0, y0) not in seen:  # same size and scale: the corner identifies the position
            seen.add((x0, y0))
            out.append(Window(x0, y0, x0 + window.width, y0 + window.height, window.scale))
    return out


def refine_window(window: Window, gain: GainMap, cfg: Optional[WindowConfig] = None,
                  positions: Optional[Sequence[Window]] = None) -> Window:
    """Paper Eq. 6: the position in :func:`refinement_windows` that covers the most gain.

    Size and scale are unchanged and the window stays inside the image; ties
    keep the smallest shift (the original window first). ``positions`` may
    pass ``refinement_windows(window, ...)`` precomputed (the environment does).
    """
    if positions is None:
        positions = refinement_windows(window, gain.width, gain.height, cfg)
    if len(positions) <= 1:
        return window
    return positions[best_position(gain.window_sums(window_boxes(positions)))]


def best_position(sums: Sequence[float]) -> int:
    """Index of the refinement position with the most gain; a later position must beat the best so far by
    more than 1e-9, so ties keep the smallest shift (``sums[0]`` is the unshifted window)."""
    sums = list(sums)
    best, best_gain = 0, sums[0]
    for k in range(1, len(sums)):
        if sums[k] > best_gain + 1e-9:
            best, best_gain = k, sums[k]
    return best
