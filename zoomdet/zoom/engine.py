"""The zoom engine: the one place that runs passes, merges and counts pixels.

Every detector pass is a :class:`~zoomdet.types.Window` with its own scale,
so the coarse pass (whole image at ``coarse_scale``), a zoom window (a region
at ``zoom_scale``: ``window_scale``, else ``fine_scale``), the full-resolution reference and SAHI's slices are all
counted the same way.

Two kinds of policy drive it (see :mod:`zoomdet.zoom.policies`):

* a :class:`PlanPolicy` returns its windows up front (``coarse``, ``fine``,
  ``sahi``) and merges their detections itself;
* a :class:`ZoomPolicy` picks candidate windows one at a time after the
  coarse pass (``random``, ``oracle``, and the learned policies). As in the
  paper, its state is the coarse result, the gain map and the windows
  already zoomed, never the fine detections, so the engine runs all fine
  crops of an episode together in batched detector calls.

Cost accounting (:class:`Cost`), per image:

* ``model_input_pixels``: pixels the detector received, summed over passes,
  after the one explicit resize (the model's own resize is pinned off).
  Overlapping windows count as often as they are processed.
* ``pixels_ratio``: ``model_input_pixels / (width * height)``; the coarse
  pass at 0.5 costs 0.25, the full-resolution pass 1.0, SAHI > 1.
* ``pixels_source``: full-resolution source pixels read, summed over passes
  (the coarse pass reads the whole image once).
* ``detector_calls``: batched model forward calls.

Bounded passes: with ``max_pass_pixels``, a window whose detector input is
larger (a fine pass over a huge upload, or its coarse pass) is detected as
overlapping tiles of at most that many input pixels (:func:`split_window`),
merged by :func:`~zoomdet.zoom.merge.merge_tiles`; the tiles, with
their overlap, are what the cost counts. This bounds the memory and the
duration of every forward call whatever the image size (the service sets it).

Scenes (``frame_size``): an image with a side longer than ``frame_size`` is run
by a sequential policy as the fewest overlapping frames of at most that side
(:func:`~zoomdet.zoom.windows.scene_frames`), each a whole episode: its coarse
pass, its candidate windows (fractions of the frame), its gain map and its
choices, as for an image of the size the R-net and the agent were trained on.
The frames share the scene's budget (``max_pixels_ratio`` times the scene's
pixels, so the scene's ratio holds though their coarse passes overlap): their
coarse passes and gain maps run first, and what the coarse passes leave goes
to the frames in proportion to the gain their maps predict
(:meth:`ZoomEngine._frame_budgets`; an equal share with a deadline or without
a gain map). With ``frame_carry`` the frames then run from the
least predicted gain to the most, and what a frame leaves of its share goes to
the frames after it, in proportion to their gain. The scene keeps each
detection from the frame whose core holds its centre (:func:`~zoomdet.zoom.windows.frame_cores`); costs,
regions and stage times add up. Plan policies (``coarse``, ``fine``, ``sahi``)
run the scene whole, bounded by ``max_pass_pixels``.

Deadlines (``run(..., deadline=)``): a sequential policy's answer is anytime.
The coarse pass always runs; the fine pass then runs the chosen windows in
the order they were chosen, at most the detector's ``batch_size`` of them
per call, and a call is not started when the time so far plus its estimate
(its input pixels times the seconds per input pixel measured on this
image's fine calls so far, or on its coarse pass before the first) would
pass the deadline. The windows left out are not run, not charged and not
merged (:attr:`ZoomResult.dropped`); the answer is the coarse pass plus the
windows that fitted, most wanted first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from zoomdet.detector.detector import Detector, batch_plan
from zoomdet.types import Detections, Window
from zoomdet.zoom.merge import MergeConfig, MergeResult, merge_tiles, merge_zoom
from zoomdet.zoom.windows import (GainMap, WindowConfig, candidate_windows, frame_cores, refine_window, scene_frames,
                                  split_window)

__all__ = ["ZoomConfig", "Cost", "Region", "ZoomResult", "EpisodeState", "PlanPolicy", "ZoomPolicy", "ZoomEngine",
           "GroundTruth", "STAGES"]

STAGES = ("decode", "coarse", "gain", "policy", "fine", "merge")
GAIN_GRID_CELL = 32
"""Cell side (pixels) of :attr:`ZoomResult.gain_grid`."""


@dataclass
class ZoomConfig:
    """Options of the zoom engine."""

    coarse_scale: float = 0.5
    """Resize factor of the coarse pass (0.5 per side = 25% of the pixels)."""
    fine_scale: float = 1.0
    """Resize factor of the ``fine`` reference pass and, unless ``window_scale`` is set, of zoomed windows
    (1.0 = full resolution)."""
    window_scale: Optional[float] = None
    """Resize factor of zoomed windows when it differs from ``fine_scale`` (e.g. 0.5 on 2560-px satellite
    images: coarse at 0.25, zoom to 0.5, ratios still relative to full resolution); ``None`` = ``fine_scale``."""
    windows: WindowConfig = field(default_factory=WindowConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    max_pixels_ratio: float = 1.0
    """Budget per image: a window is taken only if the total ``pixels_ratio`` stays within it."""
    max_steps: int = 13
    """Budget per image: at most this many zoom windows."""
    max_pass_pixels: Optional[int] = None
    """Largest detector input of one pass, pixels; a larger window is detected as overlapping tiles of at
    most this size (see the module docstring). ``None`` = every window in one pass."""
    tile_overlap: float = 0.1
    """With ``max_pass_pixels``: fraction of a tile's side shared with its neighbour."""
    frame_size: Optional[int] = None
    """Scenes: a sequential policy runs an image with a side longer than this as overlapping frames of at
    most this side, one episode each (see the module docstring), e.g. the size the R-net and the agent were
    trained on. ``None`` = every image is one episode."""
    frame_overlap: int = 512
    """With ``frame_size``: pixels neighbouring frames share. An object narrower than this is whole in the frame that
    keeps it, and one narrower than half of it at least a quarter of it from that frame's edges."""
    frame_carry: bool = False
    """With ``frame_size``: the frames run from the least predicted gain to the most, and the pixels a frame leaves
    of its share go to the frames after it (in proportion to their gain), instead of staying unspent. Off by
    default: with ``greedy-entropy`` on Airbus scenes it bought nothing (docs/airbus.md, *Whole scenes*)."""

    @property
    def zoom_scale(self) -> float:
        """The scale zoomed windows run at: ``window_scale``, or ``fine_scale`` when that is ``None``."""
        return self.fine_scale if self.window_scale is None else float(self.window_scale)

    def __post_init__(self) -> None:
        if self.max_pass_pixels is not None and self.max_pass_pixels < 1024:
            raise ValueError(f"max_pass_pixels must be >= 1024 or null, got {self.max_pass_pixels}")
        if not 0 < self.coarse_scale <= 1 or not 0 < self.fine_scale <= 4 or not 0 < self.zoom_scale <= 4:
            raise ValueError(f"scales must be in (0, 1], (0, 4] and (0, 4], got coarse {self.coarse_scale}, "
                             f"fine {self.fine_scale}, window {self.window_scale}")
        if self.frame_size is not None and (self.frame_size < 64 or not 0 <= self.frame_overlap <= self.frame_size // 2):
            raise ValueError(f"frame_size must be >= 64 or null and frame_overlap in [0, frame_size / 2], got "
                             f"{self.frame_size}, {self.frame_overlap}")
        if self.max_pixels_ratio <= 0 or self.max_steps < 0:
            raise ValueError(f"max_pixels_ratio must be > 0 and max_steps >= 0, got {self.max_pixels_ratio}, {self.max_steps}")


@dataclass
class Cost:
    """What an image cost; see the module docstring for definitions."""

    pixels_source: int = 0
    model_input_pixels: int = 0
    detector_calls: int = 0
    image_pixels: int = 1

    @property
    def pixels_ratio(self) -> float:
        return self.model_input_pixels / self.image_pixels

    def add(self, windows: Sequence[Window], calls: int) -> None:
        self.pixels_source += sum(w.source_pixels for w in windows)
        self.model_input_pixels += sum(w.input_pixels for w in windows)
        self.detector_calls += calls

    def as_dict(self) -> dict:
        return {"pixels_source": self.pixels_source, "pixels_ratio": self.pixels_ratio,
                "model_input_pixels": self.model_input_pixels, "detector_calls": self.detector_calls}


@dataclass(frozen=True)
class Region:
    """A zoomed window: ``candidate`` index, the window before and after refinement, the step, and the
    gain the policy's map predicted inside the refined window when it was chosen (``None`` without a map)."""

    id: int
    step: int
    candidate: int
    proposed: Window
    window: Window
    predicted_gain: Optional[float] = None


@dataclass(frozen=True)
class GroundTruth:
    """Ground truth handed to oracle policies only: boxes ``[G, 4]`` xyxy, labels ``[G]``, crowd ``[G]``."""

    boxes: Tensor
    labels: Tensor
    crowd: Tensor


@dataclass
class ZoomResult:
    """Everything one image produced: merged detections (with ``stage`` and ``region`` per detection),
    the coarse detections, the regions and their fine detections (``fine[i]`` belongs to ``regions[i]``;
    for plan policies, each planned window's detections), cost and timing (seconds)."""

    detections: Detections
    stage: Tensor
    region: Tensor
    coarse: Detections
    regions: list[Region]
    cost: Cost
    timing: dict[str, float]
    width: int
    height: int
    fine: list[Detections] = field(default_factory=list)
    gain_grid: Optional[np.ndarray] = None
    """The policy's AG map before any zoom, summed over a grid of ~``GAIN_GRID_CELL``-px cells over the image
    (``float32[rows, cols]``, gain units per cell); ``None`` for policies without a map. For pictures."""
    dropped: int = 0
    """Windows the policy chose that a ``deadline`` left out: not run, not charged, not merged (they are not in
    ``regions``)."""
    frames: list[Window] = field(default_factory=list)
    """The frames a scene larger than ``frame_size`` ran as (scene pixels); empty when the image was one episode."""


@dataclass
class EpisodeState:
    """What a :class:`ZoomPolicy` sees when choosing the next window.

    Attributes:
        width, height: image size, pixels.
        coarse: coarse detections, image pixels.
        candidates: the candidate windows (actions).
        zoomed: indices of candidates already taken, in order.
        pixels_ratio: cost so far, coarse pass included.
        gain: the current gain map (zeroed where zoomed) or ``None``.
        available: ``bool[len(candidates)]``, windows not taken and within budget.
        rng: per-image random generator.
        ground_truth: oracle policies only.
        lookahead: oracle policies only; fine detections of candidate windows,
            timed separately (``oracle_lookahead``), not in the cost.
        memory: per-episode scratch space for the policy, so policy objects
            themselves keep no per-image state.
        zoomed_windows: the windows zoomed so far, after refinement.
        max_pixels_ratio: the episode's pixel budget.
        coarse_features: ``() -> (maps, stride)``: the detector's backbone maps of the coarse view
            (:meth:`~zoomdet.detector.detector.Detector.feature_maps`). A policy with a true
            ``reads_coarse_features`` attribute gets the coarse pass's own (the backbone runs once, timed in
            ``coarse``); otherwise, or when the pass cannot return them (a tiled coarse view), they are computed
            on the first call of an episode and timed with the policy's stage that asked for them (``gain`` when
            its ``gain_map`` does).
    """

    width: int
    height: int
    coarse: Detections
    candidates: list[Window]
    zoomed: list[int]
    pixels_ratio: float
    gain: Optional[GainMap]
    available: np.ndarray
    rng: np.random.Generator
    ground_truth: Optional[GroundTruth] = None
    lookahead: Optional[Callable[[Sequence[Window]], list[Detections]]] = None
    memory: dict = field(default_factory=dict)
    zoomed_windows: list[Window] = field(default_factory=list)
    max_pixels_ratio: float = 1.0
    coarse_features: Optional[Callable[[], tuple[dict, tuple[float, float]]]] = None


@runtime_checkable
class PlanPolicy(Protocol):
    """A policy whose windows do not depend on any detection (coarse, fine, SAHI).

    Its detector time is reported under the stage named by ``stage`` (``coarse`` or ``fine``).
    """

    name: str
    stage: str

    def plan(self, width: int, height: int, config: ZoomConfig) -> list[Window]: ...

    def combine(self, detections: list[Detections], windows: list[Window], width: int, height: int,
                config: ZoomConfig) -> MergeResult: ...


@runtime_checkable
class ZoomPolicy(Protocol):
    """A sequential policy over candidate windows after the coarse pass."""

    name: str
    needs_ground_truth: bool

    def gain_map(self, state: EpisodeState) -> Optional[GainMap]:
        """Initial gain map from the coarse result (``None`` = no refinement, no gain stop)."""
        ...

    def select(self, state: EpisodeState) -> Optional[int]:
        """Index of the next candidate window, or ``None`` to stop."""
        ...


def _frame_truth(ground_truth: Optional[GroundTruth], frame: Window) -> Optional[GroundTruth]:
    """The ground truth an oracle sees in ``frame``: the boxes whose centre lies in it, clipped to it, in its
    pixels."""
    if ground_truth is None:
        return None
    keep = _centre_in(ground_truth.boxes, frame.box())
    shift = ground_truth.boxes.new_tensor([frame.x0, frame.y0, frame.x0, frame.y0])
    boxes = ground_truth.boxes[keep] - shift
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, frame.width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, frame.height)
    return GroundTruth(boxes, ground_truth.labels[keep], ground_truth.crowd[keep])


def _centre_in(boxes: Tensor, area: Tensor) -> Tensor:
    """``bool[N]``: which of ``boxes`` (``[N, 4]`` xyxy) have their centre in the half-open box ``area`` (xyxy)."""
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    area = area.to(boxes.dtype)
    return (cx >= area[0]) & (cx < area[2]) & (cy >= area[1]) & (cy < area[3])


class ZoomEngine:
    """Coarse pass, sequential window choice, batched fine pass, merge, cost.

    Args:
        detector: the detector used for every pass.
        config: scales, candidate windows, merge rule and default budgets.
    """

    def __init__(self, detector: Detector, config: Optional[ZoomConfig] = None) -> None:
        self.detector = detector
        self.config = config or ZoomConfig()

    def pass_pixels(self, window: Window) -> int:
        """Detector input pixels ``window`` costs: its own, or its tiles' (overlap included) above ``max_pass_pixels``."""
        cap = self.config.max_pass_pixels
        if not cap or window.input_pixels <= cap:
            return window.input_pixels
        return sum(t.input_pixels for t in split_window(window, cap, self.config.tile_overlap))

    def detect_windows(self, image: Tensor, windows: Sequence[Window], cost: Optional[Cost] = None,
                       features: bool = False, maps: Optional[list] = None) -> list[Detections]:
        """The detector on ``windows`` of ``image`` as every pass of the engine runs it: one :class:`Detections`
        per window, boxes xyxy in full-image pixels, a window above ``max_pass_pixels`` split into overlapping
        tiles whose detections are merged (:func:`merge_tiles`). The calls run are added to ``cost``. Only the
        sequential policies' coarse pass asks for RoI ``features`` (the R-net reads them). With ``maps`` (a list),
        a pass of one untiled window on a detector that has ``detect_with_maps`` appends the window's backbone
        maps to it from the same forward pass (:meth:`~zoomdet.detector.detector.Detector.detect_with_maps`);
        otherwise ``maps`` stays as it was."""
        if not windows:
            return []
        cap = self.config.max_pass_pixels
        tiles = [split_window(w, cap, self.config.tile_overlap) if cap else [w] for w in windows]
        flat = [t for ts in tiles for t in ts]
        if maps is not None and len(flat) == 1 and hasattr(self.detector, "detect_with_maps"):
            det, window_maps, cell = self.detector.detect_with_maps(image, flat[0], features=features)
            dets = [det]
            maps.append((window_maps, cell))
        else:
            dets = self.detector.detect(image, flat, features=features)
        if cost is not None:
            cost.add(flat, len(batch_plan(flat, self.detector.batch_size)))
        out, start = [], 0
        for ts in tiles:
            part = dets[start:start + len(ts)]
            start += len(ts)
            out.append(part[0] if len(ts) == 1 else merge_tiles(part))
        return out

    def _pass(self, image: Tensor, windows: Sequence[Window], cost: Cost, memo: Optional[dict],
              features: bool = False, maps: Optional[list] = None) -> tuple[list[Detections], float]:
        """One detector pass over ``windows`` and its seconds. With ``memo`` (one image's), a pass over the same
        windows is run once and every later run is charged the same pixels, calls and measured seconds (and
        given the same ``maps``, see :meth:`detect_windows`)."""
        key = ("pass", tuple(windows), features, maps is not None)
        if memo is not None and key in memo:
            dets, seconds, pass_cost, pass_maps = memo[key]
        else:
            t = time.perf_counter()
            pass_cost = Cost(image_pixels=cost.image_pixels)
            pass_maps = None if maps is None else []
            dets = self.detect_windows(image, windows, pass_cost, features=features, maps=pass_maps)
            seconds = time.perf_counter() - t
            if memo is not None:
                memo[key] = (dets, seconds, pass_cost, pass_maps)
        if maps is not None:
            maps.extend(pass_maps)
        cost.pixels_source += pass_cost.pixels_source
        cost.model_input_pixels += pass_cost.model_input_pixels
        cost.detector_calls += pass_cost.detector_calls
        return dets, seconds

    def _fine_until(self, image: Tensor, windows: Sequence[Window], cost: Cost, deadline: float,
                    seconds_so_far: float) -> tuple[list[Detections], float]:
        """The fine pass over ``windows`` in their order, at most ``batch_size`` windows per detector call, ending
        before the first call that would end past ``deadline`` (a ``time.perf_counter()`` value) by its estimate:
        its input pixels times a rate in seconds per input pixel, that of the fine calls already run, else that
        of the passes before them (``seconds_so_far`` spent on the input pixels ``cost`` already holds). Small
        crops cost more per pixel than a whole view (each call has fixed parts), so the fine calls' own rate
        replaces the coarse pass's as soon as there is one. Returns the detections of the windows that ran, a
        prefix of ``windows``, and the seconds spent; only the calls that ran are charged to ``cost``."""
        out: list[Detections] = []
        seconds, pixels = 0.0, 0
        rate = seconds_so_far / max(cost.model_input_pixels, 1)
        size = max(1, self.detector.batch_size)
        for start in range(0, len(windows), size):
            chunk = windows[start:start + size]
            chunk_pixels = sum(self.pass_pixels(w) for w in chunk)
            if time.perf_counter() + rate * chunk_pixels > deadline:
                break
            t = time.perf_counter()
            out += self.detect_windows(image, chunk, cost)
            seconds += time.perf_counter() - t
            pixels += chunk_pixels
            rate = seconds / max(pixels, 1)
        return out, seconds

    def _run_frames(self, image: Tensor, policy: ZoomPolicy, *, ground_truth: Optional[GroundTruth], seed: int,
                    budget: float, steps: int, decode_seconds: float, lookahead_memo: Optional[dict],
                    pass_memo: Optional[dict], deadline: Optional[float]) -> ZoomResult:
        """A scene as frames of at most ``frame_size``, one :meth:`run` each (see the module docstring). Frame ``k``
        runs with seed ``seed + k``, its own part of the memos and the scene's deadline, and the budget
        :meth:`_frame_budgets` gives it."""
        c = self.config
        _, H, W = image.shape
        frames = scene_frames(W, H, c.frame_size, c.frame_overlap)
        cores = torch.as_tensor(frame_cores(frames))
        crops = [image[:, f.y0:f.y1, f.x0:f.x1] for f in frames]
        truths = [_frame_truth(ground_truth, f) for f in frames]
        keys = [("frame", f.as_tuple()) for f in frames]
        lookahead_memo = {} if lookahead_memo is None else lookahead_memo
        if deadline is None and pass_memo is None:
            pass_memo = {}  # the probes' coarse passes, run once
        cost, timing = Cost(image_pixels=W * H), {s: 0.0 for s in STAGES}
        frame_pixels = [f.width * f.height for f in frames]
        budgets, gains, probe_seconds = self._frame_budgets(crops, frame_pixels, policy, truths, seed, budget * W * H,
                                                            lookahead_memo, pass_memo, keys, timing)
        order = sorted(range(len(frames)), key=lambda k: gains[k]) if c.frame_carry else range(len(frames))
        results: list = [None] * len(frames)
        frames_total, spare = probe_seconds, 0.0  # then each frame's own total; the pixels earlier frames left
        t_stitch = time.perf_counter()
        for i, k in enumerate(order):
            share = 0.0
            if c.frame_carry:
                rest = sum(gains[j] for j in order[i:])
                share = spare * (gains[k] / rest if rest > 0 else 1 / (len(frames) - i))
            allowed = budgets[k] * frame_pixels[k] + share
            t_frame = time.perf_counter()
            res = self.run(crops[k], policy, ground_truth=truths[k], seed=seed + k,
                           max_pixels_ratio=allowed / frame_pixels[k], max_steps=steps,
                           lookahead_memo=lookahead_memo.setdefault(keys[k], {}),
                           pass_memo=None if pass_memo is None else pass_memo.setdefault(keys[k], {}), deadline=deadline)
            t_stitch += time.perf_counter() - t_frame  # the frame's own time is in its total
            frames_total += res.timing["total"]
            if c.frame_carry:
                spare += allowed - share - res.cost.model_input_pixels
            results[k] = res
        regions: list[Region] = []
        fine: list[Detections] = []
        kept, coarse, stage, region = [], [], [], []
        dropped = 0
        for f, core, res in zip(frames, cores, results):
            for name in STAGES:
                timing[name] += res.timing.get(name, 0.0)
            if "oracle_lookahead" in res.timing:
                timing["oracle_lookahead"] = timing.get("oracle_lookahead", 0.0) + res.timing["oracle_lookahead"]
            cost.pixels_source += res.cost.pixels_source
            cost.model_input_pixels += res.cost.model_input_pixels
            cost.detector_calls += res.cost.detector_calls
            dets = res.detections.shifted(f.x0, f.y0)
            keep = _centre_in(dets.boxes, core)
            kept.append(dets.select(keep))
            stage.append(res.stage[keep])
            region.append(torch.where(res.region[keep] >= 0, res.region[keep] + len(regions), res.region[keep]))
            frame_coarse = res.coarse.without_features().shifted(f.x0, f.y0)
            coarse.append(frame_coarse.select(_centre_in(frame_coarse.boxes, core)))
            regions += [Region(len(regions) + r.id, len(regions) + r.step, r.candidate, r.proposed.shifted(f.x0, f.y0),
                               r.window.shifted(f.x0, f.y0), r.predicted_gain) for r in res.regions]
            fine += [d.shifted(f.x0, f.y0) for d in res.fine]
            dropped += res.dropped
        timing["decode"] = decode_seconds
        # the frames' own totals (memo replays and look-ahead accounted as in run) and the stitching around them
        timing["total"] = decode_seconds + frames_total + time.perf_counter() - t_stitch
        return ZoomResult(Detections.cat(kept), torch.cat(stage), torch.cat(region), Detections.cat(coarse), regions,
                          cost, timing, W, H, fine, None, dropped=dropped, frames=frames)

    def _frame_budgets(self, crops: Sequence[Tensor], frame_pixels: Sequence[int], policy: ZoomPolicy,
                       truths: Sequence[Optional[GroundTruth]], seed: int, pixels: float, lookahead_memo: dict,
                       pass_memo: Optional[dict], keys: Sequence, timing: dict) -> tuple[list[float], list[float], float]:
        """Each frame's ``max_pixels_ratio``, so the frames (``crops``, of ``frame_pixels`` pixels each) together
        spend at most ``pixels`` input pixels.

        With a ``pass_memo`` (one is made unless a deadline rules it out), each frame's coarse pass and gain map
        run first, the passes kept in the memo for the episode that follows and the gain maps' time added to
        ``timing``; what the coarse passes leave of the budget then goes to the frames in proportion to the
        positive gain their maps predict, as one episode over the scene would spend it where the gain is. Without
        a memo (a deadline), for a policy without a gain map, or with no gain anywhere, every frame gets the same
        share of its pixels. Returns the ratios, the positive gain each frame's map predicts (zeros without
        probes) and the seconds the probes added to the answer (their gain maps)."""
        uniform = [pixels / sum(frame_pixels)] * len(crops)
        if pass_memo is None:
            return uniform, [0.0] * len(crops), 0.0
        probes = [self.run(x, policy, ground_truth=t, seed=seed + k, max_steps=0, max_pixels_ratio=uniform[0],
                           lookahead_memo=lookahead_memo.setdefault(key, {}), pass_memo=pass_memo.setdefault(key, {}))
                  for k, (x, t, key) in enumerate(zip(crops, truths, keys))]
        extra = sum(p.timing["gain"] for p in probes)
        timing["gain"] += extra
        gains = [0.0 if p.gain_grid is None else float(np.clip(p.gain_grid, 0, None).sum()) for p in probes]
        spare = pixels - sum(p.cost.model_input_pixels for p in probes)
        if sum(gains) <= 0 or spare <= 0:
            return uniform, gains, extra
        return [(p.cost.model_input_pixels + spare * g / sum(gains)) / n
                for p, g, n in zip(probes, gains, frame_pixels)], gains, extra

    def candidates(self, width: int, height: int) -> list[Window]:
        c = self.config
        return [w.with_scale(c.zoom_scale) for w in candidate_windows(width, height, c.windows)]

    def run(self, image: Tensor, policy: PlanPolicy | ZoomPolicy, *, ground_truth: Optional[GroundTruth] = None,
            seed: int = 0, max_pixels_ratio: Optional[float] = None, max_steps: Optional[int] = None,
            decode_seconds: float = 0.0, lookahead_memo: Optional[dict] = None,
            pass_memo: Optional[dict] = None, deadline: Optional[float] = None) -> ZoomResult:
        """Detect objects in ``image`` with ``policy``.

        Args:
            image: ``Tensor[3, H, W]`` float32 RGB in [0, 1], full resolution (not modified).
            policy: a :class:`PlanPolicy` or :class:`ZoomPolicy`.
            ground_truth: required by oracle policies, ignored otherwise.
            seed: seed of the per-image random generator (random policy).
            max_pixels_ratio, max_steps: per-call budgets (default: the config's).
            decode_seconds: time the caller spent decoding, reported as stage ``decode``.
            lookahead_memo: a dict the caller keeps for one image and passes to every run on it; an
                oracle's look-ahead then runs each candidate window once for all policies and budgets
                (the look-ahead is never part of the cost, so this changes no reported figure).
            pass_memo: a dict the caller keeps for one image and passes to every run on it; a sequential
                policy's coarse pass, and a fine pass over exactly the windows of an earlier run, then run
                once per image. Each run is still charged every pass in full: its pixels, its calls and its
                measured seconds (stages ``coarse`` and ``fine``), so the reported figures are those of a
                run on its own, without running the same pass again.
            deadline: a ``time.perf_counter()`` value by which a sequential policy's answer is wanted (see the
                module docstring: the coarse pass always runs, the windows that would end past it are left out
                and counted in :attr:`ZoomResult.dropped`). Plan policies ignore it. Not with ``pass_memo``
                (a memo replays measured seconds).
        """
        c = self.config
        budget = c.max_pixels_ratio if max_pixels_ratio is None else float(max_pixels_ratio)
        steps = c.max_steps if max_steps is None else int(max_steps)
        if budget <= 0 or steps < 0:
            raise ValueError(f"max_pixels_ratio must be > 0 and max_steps >= 0, got {budget}, {steps}")
        if deadline is not None and pass_memo is not None:
            raise ValueError("deadline and pass_memo cannot be combined: a memo replays the seconds of earlier runs")
        _, H, W = image.shape
        timing = {s: 0.0 for s in STAGES}
        timing["decode"] = decode_seconds
        cost = Cost(image_pixels=W * H)
        t_start = time.perf_counter()

        if isinstance(policy, PlanPolicy):
            windows = policy.plan(W, H, c)
            t = time.perf_counter()
            dets = self.detect_windows(image, windows, cost)
            timing[getattr(policy, "stage", "fine")] = time.perf_counter() - t
            t = time.perf_counter()
            merged = policy.combine(dets, windows, W, H, c)
            timing["merge"] = time.perf_counter() - t
            timing["total"] = time.perf_counter() - t_start + decode_seconds
            coarse = dets[0] if len(windows) == 1 else Detections.empty()
            regions = [Region(i, i, -1, w, w) for i, w in enumerate(windows)]
            return ZoomResult(merged.detections, merged.stage, merged.region, coarse, regions, cost, timing, W, H,
                              [d.without_features() for d in dets])

        if getattr(policy, "needs_ground_truth", False) and ground_truth is None:
            raise ValueError(f"policy {policy.name!r} needs ground truth (it is an oracle); pass ground_truth=")
        if c.frame_size is not None and max(W, H) > c.frame_size:
            return self._run_frames(image, policy, ground_truth=ground_truth, seed=seed, budget=budget, steps=steps,
                                    decode_seconds=decode_seconds, lookahead_memo=lookahead_memo,
                                    pass_memo=pass_memo, deadline=deadline)
        t = time.perf_counter()
        # a policy that reads the coarse view's backbone maps gets them from the coarse pass's own forward
        feature_memo: Optional[list] = [] if getattr(policy, "reads_coarse_features", False) else None
        (coarse,), timing["coarse"] = self._pass(image, [Window.full(W, H, c.coarse_scale)], cost, pass_memo,
                                                 features=True, maps=feature_memo)
        reused_s = timing["coarse"] - (time.perf_counter() - t)  # > 0 when the memo saved running the pass again

        cands = self.candidates(W, H)
        lookahead_calls, lookahead_s = [0], [0.0]

        memo = {} if lookahead_memo is None else lookahead_memo

        def lookahead(windows: Sequence[Window]) -> list[Detections]:
            t0 = time.perf_counter()
            todo = list(dict.fromkeys(w for w in windows if w not in memo))
            calls = Cost()
            memo.update(zip(todo, self.detect_windows(image, todo, calls)))
            lookahead_calls[0] += calls.detector_calls
            lookahead_s[0] += time.perf_counter() - t0
            return [memo[w] for w in windows]

        if feature_memo is None:
            feature_memo = []

        def coarse_features() -> tuple[dict, tuple[float, float]]:  # the same pixels as the coarse pass: no cost
            if not feature_memo:  # the pass could not return them (a tiled view, a detector without them)
                feature_memo.append(self.detector.feature_maps(image, Window.full(W, H, c.coarse_scale)))
            return feature_memo[0]

        oracle = bool(getattr(policy, "needs_ground_truth", False))  # only oracles may see ground truth
        state = EpisodeState(W, H, coarse, cands, [], cost.pixels_ratio, None, np.ones(len(cands), dtype=bool),
                             np.random.default_rng(seed), ground_truth if oracle else None, lookahead if oracle else None,
                             max_pixels_ratio=budget, coarse_features=coarse_features)
        t = time.perf_counter()
        state.gain = policy.gain_map(state)
        timing["gain"] = time.perf_counter() - t
        gain_grid = None
        if state.gain is not None:  # cheap (O(grid cells)); taken before zooming zeroes the map
            gain_grid = state.gain.pooled(-(-H // GAIN_GRID_CELL), -(-W // GAIN_GRID_CELL))

        regions: list[Region] = []
        spent = cost.model_input_pixels
        t = time.perf_counter()
        cand_pixels = np.array([self.pass_pixels(w) for w in cands], dtype=np.int64)  # refinement keeps the size
        taken = np.zeros(len(cands), dtype=bool)
        while len(regions) < steps:
            state.available = ~taken & (spent + cand_pixels <= budget * W * H + 1e-6)
            if not state.available.any():
                break
            choice = policy.select(state)
            if choice is None:
                break
            if not (0 <= choice < len(cands)) or not state.available[choice]:
                raise ValueError(f"policy {policy.name!r} chose window {choice}, which is not available")
            proposed = cands[choice]
            window = refine_window(proposed, state.gain, c.windows) if state.gain is not None else proposed
            predicted = state.gain.window_sum(window) if state.gain is not None else None
            regions.append(Region(len(regions), len(regions), choice, proposed, window, predicted))
            spent += self.pass_pixels(window)
            state.zoomed.append(choice)
            taken[choice] = True
            state.zoomed_windows.append(window)
            state.pixels_ratio = spent / (W * H)
            if state.gain is not None:
                state.gain.zero_(window)  # the episode owns its map
        timing["policy"] = time.perf_counter() - t - lookahead_s[0]

        t = time.perf_counter()
        chosen = len(regions)
        if deadline is None:
            fine, timing["fine"] = self._pass(image, [r.window for r in regions], cost, pass_memo) if regions else ([], 0.0)
            reused_s += timing["fine"] - (time.perf_counter() - t)
        else:
            fine, timing["fine"] = self._fine_until(image, [r.window for r in regions], cost, deadline, timing["coarse"])
            regions = regions[:len(fine)]
        t = time.perf_counter()
        merged = merge_zoom(coarse, fine, [r.window for r in regions], W, H, c.merge)
        timing["merge"] = time.perf_counter() - t
        # an oracle's look-ahead at every candidate is not part of its cost
        timing["total"] = time.perf_counter() - t_start + decode_seconds - lookahead_s[0] + reused_s
        if lookahead_calls[0]:
            timing["oracle_lookahead"] = lookahead_s[0]
        return ZoomResult(merged.detections, merged.stage, merged.region, coarse, regions, cost, timing, W, H,
                          [f.without_features() for f in fine], gain_grid, dropped=chosen - len(regions))
