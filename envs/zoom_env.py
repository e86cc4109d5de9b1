"""``ZoomDet-v0``: the zoom-in decision process of the Dynamic Zoom-in Network over a rollout cache.

One episode is one image of a :class:`~zoomdet.rnet.cache.RolloutCache`; the
detector never runs inside :meth:`ZoomEnv.step` (every window the agent can
reach, refined or not, was detected when the cache was built).

Observation (``Dict``):

* ``map``: ``float32[3, rows, cols]`` (default ``3 x 12 x 16``), channel first:

  0. the accuracy-gain (AG) map pooled to the grid (the gain inside each grid
     cell, times ``obs_scale``), zeroed where the agent already zoomed: the
     paper's state;
  1. the share of each grid cell already zoomed (0..1): the zoom history,
     which the zeroed AG map alone cannot tell apart from "no gain here";
  2. a constant plane: the share of the pixel budget still unspent (0..1);
  3. optional context planes, one per name in ``extra_channels``
     (:data:`EXTRA_CHANNELS`), computed once per image from the coarse
     detections alone (deployable): ``entropy`` (the ER state, bits per
     cell), ``scores`` (coarse score mass per cell), ``small`` (coarse boxes
     under 32 px per cell) and ``budget`` (a constant plane: the pixel budget
     left as a fraction of the image, which tells budgets apart when
     ``budget_range`` draws one per episode).

  The paper pools the map 16x; a fixed grid instead makes one Q-net serve
  every image size (cells of 40-128 px for 640-2048 px images), and keeps
  the replay buffer small. The candidate windows span 5-7 cells per side.
* ``mask``: ``int8[K + 1]``, 1 where :meth:`ZoomEnv.action_masks` allows the action.
* ``windows`` (only with ``window_features: true``): ``float32[K + 1, F]``, one
  row of :data:`WINDOW_FEATURES` per action (:func:`window_features`): what
  the candidate window holds on the current maps (R-net gain, entropy, score
  mass, small boxes, share not yet zoomed, all zeroed where the agent
  zoomed), its cost, and the episode's globals (budget left, steps, gain
  and entropy left); the last row is the stop action. The window Q-net
  (``head: features``) scores every row with one shared MLP, so it learns a
  rule over what a window holds rather than a value per grid position.

Actions: ``Discrete(K + 1)``: candidate window ``a < K`` of the zoom engine
(13 by default: 2x2 large, then 3x3 small), or ``K`` = stop.

Step with window ``a``: refine it on the AG map (paper Eq. 6), look up the
fine detections of the refined window in the cache, zero it on the map.
Reward (paper Eq. 1): the window's true accuracy gain (items whose centre no
earlier window covered, :func:`~zoomdet.zoom.gain.fresh_gain`) minus
``lam * window pixels / image pixels`` (model input pixels at the fine
scale). Stop: reward 0. With ``reward="ap"`` the first term is instead the
change of the image's COCO AP (x 100, AP points) that the step makes to the
merged detections (:class:`~zoomdet.eval.coco_eval.ImageAP`, COCOeval on that
image alone): an episode's rewards then sum to the AP the zoom added, minus
``lam`` times the pixels spent, so the objective is the metric. Per-image AP
cannot see what ranking all images' detections together does (a false
positive below its own image's true positives, or of a class the image does
not hold, costs it nothing); ``reward="dataset-ap"`` keeps that: the step's
change of the COCO AP of all the cache's images, the others at their coarse
detections (:class:`~zoomdet.eval.coco_eval.PoolAP`), x 100 x their number,
so its units are the per-image reward's.

Terminated on stop, when the remaining positive AG sum falls under
``stop_gain`` (0.1, the paper's rule), or when every window has been taken.
Truncated at ``max_steps`` and when the pixel budget leaves no window that
fits. A masked-out action (a window already zoomed, fully covered, or over
budget) changes nothing and earns 0; masked agents never take one.

``info``: ``pixels_ratio`` (coarse pass included, as the engine counts it),
``window`` (the refined window, xyxy pixels) and ``proposed``, ``true_gain``,
``predicted_gain``, ``image_id``; on the last step of an episode also
``detections``: coarse and fine merged exactly as the live engine merges
them, as COCO result dicts, so episodes can be scored with COCOeval like the
live pipeline (:meth:`ZoomEnv.merged` gives them as ``Detections``).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Optional, Sequence

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from zoomdet.rnet.cache import CacheRecord, RolloutCache
from zoomdet.types import Detections, Window
from zoomdet.zoom.gain import GainItems, fresh_gain, window_gain_items
from zoomdet.zoom.merge import merge_zoom
from zoomdet.zoom.windows import GainMap, best_position, window_boxes

__all__ = ["ZoomEnvConfig", "ZoomEnv", "observe", "budget_left", "gain_model_for", "zoomed_coverage", "covered_by",
           "window_geometry", "context_planes", "EXTRA_CHANNELS", "WINDOW_FEATURES", "WINDOW_EXTRAS", "feature_maps",
           "window_features"]

STATES = ("rnet", "entropy", "oracle")
REWARDS = ("gain", "ap", "dataset-ap")
EXTRA_CHANNELS = ("entropy", "scores", "small", "budget")
WINDOW_FEATURES = ("gain", "entropy", "scores", "small", "unzoomed", "cost", "cost_over_left", "budget_left",
                   "steps", "gain_left", "entropy_left", "stop")
"""Columns of the ``windows`` observation (:func:`window_features`)."""
WINDOW_EXTRAS = {"density": ("gain_per_cost", "entropy_per_cost", "scores_per_cost", "small_per_cost"),
                 "classes": (), "position": ("center_x", "center_y")}
"""Optional column groups appended after :data:`WINDOW_FEATURES` (``window_extras``): ``density`` is each window's
sums divided by its cost, so a rule that ranks windows by gain per pixel (``greedy``, ``greedy-entropy``) is one
weight of the first layer instead of a ratio the MLP must approximate. ``classes`` is the entropy and the score
mass per unit of cost of each class's coarse boxes (two columns per category of ``ZoomEnvConfig.classes``,
named ``entropy_per_cost_c<id>`` and ``scores_per_cost_c<id>``): AP is a mean over classes, so a rare class's
uncertain box is worth more than a common one's, and the class-blind columns cannot say which is which.
``position`` is the window's centre as a fraction of the image's width and height (0 at the left and top edges):
in oblique drone frames the top of the frame is far away, where objects are smallest and the coarse pass misses
them without a trace, so where a window lies says what its coarse boxes cannot."""
SMALL_PX = 32.0
"""``small`` context plane: coarse boxes whose side (sqrt of area, full-resolution pixels) is under this."""


@dataclass
class ZoomEnvConfig:
    """Options of :class:`ZoomEnv` (also the keyword arguments of ``gymnasium.make("ZoomDet-v0", cache=...)``)."""

    state: str = "rnet"
    """What builds the AG map: ``rnet`` (a trained R-net, needs ``rnet``), ``entropy`` (binary
    entropy of coarse scores, the paper's ER) or ``oracle`` (true gain labels; an upper bound)."""
    rnet: Optional[str] = None
    """R-net checkpoint (``zoomdet rnet train``), trained on features of the cache's detector."""
    reward: str = "gain"
    """``gain``: the paper's true accuracy gain (Eq. 1-2); ``ap``: the step's change of the image's COCO AP
    x 100; ``dataset-ap``: the step's change of the dataset's AP x 100 x its number of images, with the
    cache's other images at their coarse detections (see the module docstring)."""
    lam: float = 5.0
    """λ of the reward: cost of zooming into the whole image, in gain units (AP points with ``reward: ap``)."""
    stop_gain: float = 0.1
    """Terminate when the positive AG sum left on the map falls below this (the paper's 0.1)."""
    max_steps: int = 13
    """Step cap (truncation)."""
    max_pixels_ratio: float = 1.0
    """Pixel budget, coarse pass included (windows that do not fit are masked; the episode ends when none fits,
    see ``exhausted``)."""
    exhausted: str = "truncate"
    """How an episode ends when no window fits the budget: ``truncate`` (the default, as every agent before
    it was trained) or ``terminate``. Only the stop action is left then, worth 0, so ``terminate`` is the MDP's
    own end. With ``truncate``, DQN bootstraps the last zoom's target from the next state's one allowed
    action, the stop action, whose Q-value nothing trains in such states (the episode never goes on from
    them): an arbitrary value leaks into every budget-ending zoom."""
    budget_range: Optional[Sequence[float]] = None
    """``[low, high]``: each episode draws its pixel budget uniformly in this range (``np_random``) instead of
    ``max_pixels_ratio``, so one agent answers any per-request budget; ``None``: the fixed budget."""
    extra_channels: Sequence[str] = ()
    """Context planes appended to the observation (:data:`EXTRA_CHANNELS`), e.g. ``[entropy, scores, budget]``."""
    window_features: bool = False
    """Add the ``windows`` observation (:data:`WINDOW_FEATURES` per action); DQN then uses the per-window
    feature Q-net (``head: features``) instead of the convolutional one on the map."""
    window_extras: Sequence[str] = ()
    """Column groups of :data:`WINDOW_EXTRAS` appended to the ``windows`` observation, e.g. ``[density]``
    (needs ``window_features``)."""
    classes: Sequence[int] = ()
    """Category ids of the ``classes`` window extra's columns (the detector's categories, as in its detections);
    empty: :class:`ZoomEnv` reads them from the checkpoint of the cache's detector."""
    grid: Sequence[int] = (12, 16)
    """Observation grid ``[rows, cols]``."""
    obs_scale: float = 4.0
    """Multiplier of the pooled AG channel."""
    order: str = "random"
    """``random``: each reset draws an image; ``sequential``: images in cache order (evaluation), each with the
    same ``budget_range`` draw on every pass (a generator seeded by the image's index), so evaluations of
    successive checkpoints compare them on the same budgets."""
    info_detections: bool = True
    """Merge the episode's detections into ``info["detections"]`` on its last step (training turns
    this off: the merge costs more than the rest of an episode)."""
    merge: Optional[dict] = None
    """Fields of :class:`~zoomdet.zoom.merge.MergeConfig` that replace those of the cache's merge rule (the
    ``zoom.merge`` of the config the cache was built with), e.g. ``{method: fuse, fuse_score: mean}``, so an
    agent learns for the merge its live evaluation will use. Cached detections do not depend on the merge (it
    is not part of the cache's zoom digest), so one cache serves every merge. ``None``: the cache's rule."""

    def __post_init__(self) -> None:
        from zoomdet.config import check_field_types

        check_field_types(self)  # lam:abc, info_detections:maybe, ... from --env-kwargs
        if self.state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {self.state!r}")
        if self.state == "rnet" and not self.rnet:
            raise ValueError("state 'rnet' needs an R-net checkpoint: pass rnet=PATH (or state='entropy')")
        if self.reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {self.reward!r}")
        if self.exhausted not in ("truncate", "terminate"):
            raise ValueError(f"exhausted must be 'truncate' or 'terminate', got {self.exhausted!r}")
        if self.order not in ("random", "sequential"):
            raise ValueError(f"order must be 'random' or 'sequential', got {self.order!r}")
        if self.max_pixels_ratio <= 0 or self.max_steps < 1 or self.lam < 0 or self.obs_scale <= 0:
            raise ValueError(f"max_pixels_ratio must be > 0, obs_scale must be > 0, max_steps >= 1 and lam >= 0, got "
                             f"{self.max_pixels_ratio}, {self.obs_scale}, {self.max_steps} and {self.lam}")
        if len(self.grid) != 2 or min(self.grid) < 3:
            raise ValueError(f"grid must be [rows, cols] with both >= 3, got {self.grid}")
        self.grid = tuple(int(g) for g in self.grid)
        unknown = [c for c in self.extra_channels if c not in EXTRA_CHANNELS]
        if unknown or len(set(self.extra_channels)) != len(self.extra_channels):
            raise ValueError(f"extra_channels must be distinct names from {EXTRA_CHANNELS}, got {list(self.extra_channels)}")
        self.extra_channels = tuple(self.extra_channels)
        unknown = [c for c in self.window_extras if c not in WINDOW_EXTRAS]
        if unknown or len(set(self.window_extras)) != len(self.window_extras):
            raise ValueError(f"window_extras must be distinct names from {tuple(WINDOW_EXTRAS)}, got {list(self.window_extras)}")
        if self.window_extras and not self.window_features:
            raise ValueError("window_extras add columns to the windows observation: set window_features: true")
        self.window_extras = tuple(self.window_extras)
        self.classes = tuple(int(c) for c in self.classes)
        if self.merge is not None:  # unknown fields and bad values are refused here, before any cache is read
            from zoomdet.config import from_dict
            from zoomdet.zoom.merge import MergeConfig

            from_dict(MergeConfig, self.merge, where="merge.")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be distinct category ids, got {list(self.classes)}")
        if self.budget_range is not None:
            lo, hi = (float(v) for v in self.budget_range)
            if not 0 < lo <= hi:
                raise ValueError(f"budget_range must be [low, high] with 0 < low <= high, got {list(self.budget_range)}")
            self.budget_range = (lo, hi)

    @property
    def window_columns(self) -> tuple[str, ...]:
        """Names of the ``windows`` observation's columns: :data:`WINDOW_FEATURES`, then ``window_extras``' groups."""
        if "classes" in self.window_extras and not self.classes:
            raise ValueError("window_extras [classes] needs the detector's category ids: set classes, or build the "
                             "environment on a rollout cache (ZoomEnv reads them from its detector's checkpoint)")
        return WINDOW_FEATURES + tuple(c for name in self.window_extras for c in self.extra_columns(name))

    @property
    def feature_classes(self) -> tuple[int, ...]:
        """The category ids :func:`feature_maps` makes per-class maps of: ``classes`` with the ``classes`` extra,
        else none."""
        return self.classes if "classes" in self.window_extras else ()

    def extra_columns(self, name: str) -> tuple[str, ...]:
        """The column names of the ``window_extras`` group ``name``."""
        if name == "classes":
            return tuple(f"{kind}_per_cost_c{c}" for c in self.classes for kind in ("entropy", "scores"))
        return WINDOW_EXTRAS[name]

    def episode_budget(self, rng: np.random.Generator) -> float:
        """The pixel budget of a new episode: drawn from ``budget_range`` when set, else ``max_pixels_ratio``."""
        if self.budget_range is None:
            return self.max_pixels_ratio
        return float(rng.uniform(*self.budget_range))

    @classmethod
    def from_options(cls, base: Optional["ZoomEnvConfig"] = None, **options: Any) -> "ZoomEnvConfig":
        """``base`` (or the defaults) with ``options`` replacing fields; unknown names are refused (``TypeError``)."""
        names = {f.name for f in fields(cls)}
        unknown = set(options) - names
        if unknown:
            raise TypeError(f"unknown ZoomEnv option(s) {sorted(unknown)}; options: {sorted(names)}")
        current = {} if base is None else {f: getattr(base, f) for f in names}
        return cls(**{**current, **options})


def gain_model_for(cfg: ZoomEnvConfig, detector_id: Optional[str] = None):
    """The state builder of a config (:class:`~zoomdet.rnet.model.RNetGain` or ``EntropyGain``); ``None`` for the oracle."""
    from zoomdet.rnet.model import EntropyGain, RNetGain

    if cfg.state == "rnet":
        return RNetGain.from_checkpoint(cfg.rnet, expect_detector=detector_id)
    if cfg.state == "entropy":
        return EntropyGain()
    return None


def detector_categories(cache: RolloutCache) -> list[int]:
    """The category ids of the detector that built ``cache`` (its checkpoint's), for the ``classes`` extra."""
    from zoomdet.detector.detector import checkpoint_categories

    path = cache.manifest["checkpoint"]
    try:
        return sorted(checkpoint_categories(path))
    except FileNotFoundError:
        raise ValueError(f"window_extras [classes]: the checkpoint of {cache.root}'s detector ({path}) is not here; "
                         f"set classes: [ids] to its category ids") from None


@functools.lru_cache(maxsize=64)
def _grid_edges(width: int, height: int, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    X, Y = np.linspace(0, width, cols + 1), np.linspace(0, height, rows + 1)
    return X[:-1], X[1:], Y[:-1], Y[1:]


def zoomed_coverage(zoomed: Sequence[Window], width: int, height: int, rows: int, cols: int) -> np.ndarray:
    """``float32[rows, cols]``: share of each grid cell inside a zoomed window (the largest share over windows)."""
    out = np.zeros((rows, cols), dtype=np.float32)
    xa, xb, ya, yb = _grid_edges(width, height, rows, cols)
    for z in zoomed:
        fx = np.clip(np.minimum(xb, z.x1) - np.maximum(xa, z.x0), 0, None) / (xb - xa)
        fy = np.clip(np.minimum(yb, z.y1) - np.maximum(ya, z.y0), 0, None) / (yb - ya)
        np.maximum(out, np.outer(fy, fx), out=out)
    return out


def budget_left(max_pixels_ratio: float, pixels_ratio: float, coarse_ratio: float) -> float:
    """Share (0..1) of the zoom budget (``max_pixels_ratio`` minus the coarse pass) still unspent."""
    return float(np.clip((max_pixels_ratio - pixels_ratio) / max(max_pixels_ratio - coarse_ratio, 1e-9), 0.0, 1.0))


def small_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """``float32[N]``: 1 for boxes (``[N, 4]`` xyxy pixels) whose side (sqrt of area) is under :data:`SMALL_PX`."""
    side = ((boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)).sqrt()
    return (side < SMALL_PX).float()


def context_planes(coarse: Detections, width: int, height: int, cfg: ZoomEnvConfig) -> np.ndarray:
    """``float32[C, rows, cols]``: the static context planes of ``cfg.extra_channels`` for one image, from its
    coarse detections (boxes xyxy in full-resolution pixels); ``budget`` is left 0 here (:func:`observe` fills it)."""
    from zoomdet.rnet.model import EntropyGain

    rows, cols = cfg.grid
    out = np.zeros((len(cfg.extra_channels), rows, cols), dtype=np.float32)
    boxes = coarse.boxes
    for i, name in enumerate(cfg.extra_channels):
        if name == "budget":
            continue
        if name == "entropy":
            values = EntropyGain().predict(coarse)
        elif name == "scores":
            values = coarse.scores.float()
        else:  # small
            values = small_boxes(boxes)
        out[i] = np.clip(GainMap(width, height, boxes, values).pooled(rows, cols), -100, 100)
    return out


def feature_maps(coarse: Detections, width: int, height: int, classes: Sequence[int] = ()) -> list[GainMap]:
    """The static maps :func:`window_features` reads, from the coarse detections (xyxy, full-resolution
    pixels): entropy of the scores (bits), score mass, boxes under :data:`SMALL_PX` (count), and the image's
    area (1 per pixel, so a window's sum over its area is its share not yet zoomed); then, for each category id
    in ``classes``, the entropy and the score mass of that class's boxes alone (the ``classes`` extra). Zero
    each with :meth:`GainMap.zero_` where the episode zooms, as the AG map is."""
    from zoomdet.rnet.model import EntropyGain

    boxes = coarse.boxes
    entropy, scores = EntropyGain().predict(coarse), coarse.scores.float()
    whole = torch.tensor([[0.0, 0.0, float(width), float(height)]])
    maps = [GainMap(width, height, boxes, entropy), GainMap(width, height, boxes, scores),
            GainMap(width, height, boxes, small_boxes(boxes)),
            GainMap(width, height, whole, torch.tensor([float(width * height)]))]
    for c in classes:
        mine = (coarse.labels == int(c)).to(entropy.dtype)
        maps += [GainMap(width, height, boxes, entropy * mine), GainMap(width, height, boxes, scores * mine)]
    return maps


def window_features(gain: GainMap, maps: Sequence[GainMap], boxes: np.ndarray, cost: np.ndarray, budget_abs: float,
                    step_frac: float, extras: Sequence[str] = ()) -> np.ndarray:
    """``float32[K + 1, F]``: the :data:`WINDOW_FEATURES` of ``K`` candidate windows and of the stop action (last row),
    then the columns of each :data:`WINDOW_EXTRAS` group in ``extras`` (0 on the stop row).

    Args:
        gain: the current AG map (zeroed where zoomed).
        maps: :func:`feature_maps` of the image, zeroed where zoomed (with the per-class maps when ``extras``
            holds ``classes``).
        boxes: ``float64[K, 4]`` candidate windows, xyxy pixels (unrefined).
        cost: ``float64[K]`` each window's model-input pixels / the image's pixels.
        budget_abs: pixel budget left, as a fraction of the image's pixels.
        step_frac: steps taken / ``max_steps``.

    Sums are log-compressed (``sign(x) log1p|x|``) so one MLP sees images with 1 and 100 objects alike."""
    def squash(x):
        return np.sign(x) * np.log1p(np.abs(x))

    entropy, scores, small, area = maps[:4]
    per_class = maps[4:]
    if bool(per_class) != ("classes" in extras):
        raise ValueError("the per-class maps of feature_maps(classes=...) go with window_extras [classes], both or neither")
    k = len(boxes)
    n_extra = sum(len(per_class) if name == "classes" else len(WINDOW_EXTRAS[name]) for name in extras)
    out = np.zeros((k + 1, len(WINDOW_FEATURES) + n_extra), dtype=np.float64)
    sums = np.stack([gain.window_sums(boxes), entropy.window_sums(boxes), scores.window_sums(boxes),
                     small.window_sums(boxes)], axis=1)  # [K, 4]
    out[:k, 0:4] = squash(sums)
    out[:k, 4] = area.window_sums(boxes) / np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1.0)
    out[:k, 5] = cost
    out[:k, 6] = np.minimum(cost / max(budget_abs, 1e-3), 10.0)
    out[:, 7] = max(budget_abs, 0.0)
    out[:, 8] = step_frac
    out[:, 9] = squash(gain.positive_total())
    out[:, 10] = squash(entropy.positive_total())
    out[k, 11] = 1.0
    col = len(WINDOW_FEATURES)
    for name in extras:
        if name == "density":  # the sums per unit of cost (share of the image's pixels)
            out[:k, col:col + 4] = squash(sums / np.maximum(cost, 1e-6)[:, None])
            col += len(WINDOW_EXTRAS[name])
        elif name == "classes":  # each class's entropy and score mass per unit of cost
            class_sums = np.stack([m.window_sums(boxes) for m in per_class], axis=1)  # [K, 2C]
            out[:k, col:col + len(per_class)] = squash(class_sums / np.maximum(cost, 1e-6)[:, None])
            col += len(per_class)
        elif name == "position":  # the window's centre, fractions of the image's width and height
            out[:k, col] = (boxes[:, 0] + boxes[:, 2]) / (2.0 * gain.width)
            out[:k, col + 1] = (boxes[:, 1] + boxes[:, 3]) / (2.0 * gain.height)
            col += len(WINDOW_EXTRAS[name])
    return np.clip(out, -100, 100).astype(np.float32)


def observe(gain: GainMap, zoomed: Sequence[Window], mask: np.ndarray, left: float,
            cfg: ZoomEnvConfig, coverage: Optional[np.ndarray] = None, context: Optional[np.ndarray] = None,
            budget_abs: float = 0.0, windows: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
    """The observation of a state; the live :class:`~zoomdet.agents.AgentPolicy` builds it the same way.

    Args:
        coverage: :func:`zoomed_coverage` of ``zoomed``, when already computed (the environment keeps it).
        context: :func:`context_planes` of the image (required when ``cfg.extra_channels`` is set).
        budget_abs: pixel budget left, as a fraction of the image's pixels (the ``budget`` plane).
        windows: :func:`window_features` of the state (required when ``cfg.window_features`` is set).
    """
    rows, cols = cfg.grid
    n_extra = len(cfg.extra_channels)
    obs = np.empty((3 + n_extra, rows, cols), dtype=np.float32)
    obs[0] = np.clip(gain.pooled(rows, cols) * cfg.obs_scale, -100, 100)
    obs[1] = zoomed_coverage(zoomed, gain.width, gain.height, rows, cols) if coverage is None else coverage
    obs[2] = left
    if n_extra:
        if context is None or context.shape != (n_extra, rows, cols):
            raise ValueError(f"extra_channels {list(cfg.extra_channels)} need context planes of shape "
                             f"{(n_extra, rows, cols)}; got {None if context is None else context.shape}")
        obs[3:] = context
        if "budget" in cfg.extra_channels:
            obs[3 + cfg.extra_channels.index("budget")] = max(float(budget_abs), 0.0)
    out = {"map": obs, "mask": mask.astype(np.int8)}
    if cfg.window_features:
        shape = (len(mask), len(cfg.window_columns))
        if windows is None or windows.shape != shape:
            raise ValueError(f"window_features needs a windows array of shape {shape}; "
                             f"got {None if windows is None else windows.shape}")
        out["windows"] = windows
    return out


def available_windows(candidate_pixels: np.ndarray, taken: np.ndarray, covered: np.ndarray, spent_pixels: float,
                      budget_pixels: float) -> np.ndarray:
    """``bool[K]``: candidates not taken, not fully covered by zoomed windows, and within the pixel budget."""
    return ~taken & ~covered & (spent_pixels + candidate_pixels <= budget_pixels + 1e-6)


def covered_by(windows: Sequence[Window], zoomed: Sequence[Window]) -> list[bool]:
    """For each window, whether the union of ``zoomed`` covers it entirely (it would add no new pixels)."""
    if not zoomed:
        return [False] * len(windows)
    w = np.array([x.as_tuple() for x in windows], dtype=np.float64)
    z = np.array([x.as_tuple() for x in zoomed], dtype=np.float64)
    ix = np.clip(np.minimum(w[:, None, 2], z[None, :, 2]) - np.maximum(w[:, None, 0], z[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(w[:, None, 3], z[None, :, 3]) - np.maximum(w[:, None, 1], z[None, :, 1]), 0, None)
    # necessary condition, and the common case: the overlaps add up to the window's area
    maybe = (ix * iy).sum(1) >= (w[:, 2] - w[:, 0]) * (w[:, 3] - w[:, 1])
    return [bool(m) and _union_covers(win, zoomed) for m, win in zip(maybe, windows)]


def _union_covers(w: Window, zoomed: Sequence[Window]) -> bool:
    """Exact test: every cell of the grid formed by all window edges inside ``w`` lies in some zoomed window."""
    xs = sorted({w.x0, w.x1, *(min(max(v, w.x0), w.x1) for z in zoomed for v in (z.x0, z.x1))})
    ys = sorted({w.y0, w.y1, *(min(max(v, w.y0), w.y1) for z in zoomed for v in (z.y0, z.y1))})
    for xa, xb in zip(xs[:-1], xs[1:]):
        for ya, yb in zip(ys[:-1], ys[1:]):
            cx, cy = (xa + xb) / 2, (ya + yb) / 2
            if not any(z.x0 <= cx < z.x1 and z.y0 <= cy < z.y1 for z in zoomed):
                return False
    return True


@dataclass
class _Image:
    """Per-image data computed once per cache record: the initial AG map and the gain items of every cached window."""

    record: CacheRecord
    gain: GainMap
    items: list[GainItems]
    index: dict[Window, int]
    candidate_pixels: np.ndarray
    positions: list[np.ndarray]
    """Per candidate: ``float64[P, 4]``, its refinement positions (xyxy, unshifted first)."""
    context: Optional[np.ndarray] = None
    """:func:`context_planes` of the image (``extra_channels``)."""
    maps: Optional[list[GainMap]] = None
    """:func:`feature_maps` of the image (``window_features``), before any zoom."""
    boxes: Optional[np.ndarray] = None
    """``float64[K, 4]``: the candidate windows (:func:`window_boxes`), for :func:`window_features`."""
    ap_memo: dict = field(default_factory=dict)
    """``reward="ap"``: image AP per set of zoomed cached windows (episodes on an image revisit sets)."""
    scorer: Any = None


class ZoomEnv(gym.Env):
    """The zoom-in MDP on a rollout cache (see the module docstring).

    Args:
        cache: rollout cache folder (``zoomdet cache build``) or an opened :class:`RolloutCache`.
        config: options; keyword arguments override its fields.
    """

    metadata = {"render_modes": []}

    def __init__(self, cache: str | os.PathLike | RolloutCache, config: Optional[ZoomEnvConfig] = None, **overrides: Any) -> None:
        super().__init__()
        config = ZoomEnvConfig.from_options(config, **overrides)
        self.cache = cache if isinstance(cache, RolloutCache) else RolloutCache(cache)
        if "classes" in config.window_extras and not config.classes:
            config = replace(config, classes=tuple(detector_categories(self.cache)))
        self.config = config
        self.records = self.cache.records()
        if not self.records:
            raise ValueError(f"rollout cache {self.cache.root} holds no images")
        self.zoom = self.cache.zoom
        if config.merge:
            self.zoom = replace(self.zoom, merge=replace(self.zoom.merge, **config.merge))
        self.gain_model = gain_model_for(config, self.cache.detector_id)
        self._images: dict[int, _Image] = {}
        self.num_candidates = self.records[0].num_candidates
        rows, cols = config.grid
        self.action_space = spaces.Discrete(self.num_candidates + 1)
        self.observation_space = spaces.Dict({
            "map": spaces.Box(-100.0, 100.0, shape=(3 + len(config.extra_channels), rows, cols), dtype=np.float32),
            "mask": spaces.MultiBinary(self.num_candidates + 1),
            **({"windows": spaces.Box(-100.0, 100.0, shape=(self.num_candidates + 1, len(config.window_columns)), dtype=np.float32)}
               if config.window_features else {}),
        })
        self._next = 0
        self._img: Optional[_Image] = None
        self._pool = None  # PoolAP of reward: dataset-ap, built on first use

    @staticmethod
    def candidates_of(rec: CacheRecord) -> list[Window]:
        return rec.windows[: rec.num_candidates]

    @property
    def stop_action(self) -> int:
        return self.num_candidates

    # ----------------------------------------------------------------- per-image data
    def _image(self, k: int) -> _Image:
        if k not in self._images:
            rec = self.records[k]
            if self.gain_model is None:
                from zoomdet.rnet.model import coarse_gain_targets

                gains = coarse_gain_targets(rec, self.zoom.merge.drop_ios, coarse_min_px=self.zoom.merge.coarse_min_px)
            else:
                gains = self.gain_model.predict(rec.coarse)
            gm = GainMap(rec.width, rec.height, rec.coarse.boxes, gains)
            items = [window_gain_items(rec.coarse, f, w, rec.gt_boxes, rec.gt_labels, rec.gt_crowd,
                                       self.zoom.merge.drop_ios, self.zoom.merge.coarse_min_px)[1]
                     for w, f in zip(rec.windows, rec.fine)]
            pixels = np.array([w.input_pixels for w in self.candidates_of(rec)], dtype=np.float64)
            positions = [np.array([rec.windows[j].as_tuple() for j in reach], dtype=np.float64) for reach in rec.reach]
            context = context_planes(rec.coarse, rec.width, rec.height, self.config) if self.config.extra_channels else None
            maps, boxes = None, None
            if self.config.window_features:
                maps = feature_maps(rec.coarse, rec.width, rec.height, self.config.feature_classes)
                boxes = window_boxes(self.candidates_of(rec))
            self._images[k] = _Image(rec, gm, items, {w: i for i, w in enumerate(rec.windows)}, pixels, positions, context,
                                     maps, boxes)
        return self._images[k]

    # ----------------------------------------------------------------- gymnasium API
    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        options = options or {}
        if "index" in options:
            k = int(options["index"])
            if not 0 <= k < len(self.records):
                raise ValueError(f"options['index'] must be in [0, {len(self.records)}), got {k}")
        elif self.config.order == "sequential":
            k, self._next = self._next, (self._next + 1) % len(self.records)
        else:
            k = int(self.np_random.integers(len(self.records)))
        self._img = self._image(k)
        rec = self._img.record
        self.gain = self._img.gain.copy()
        self.maps = [m.copy() for m in self._img.maps] if self._img.maps else None
        self.candidates = self.candidates_of(rec)
        self.image_pixels = rec.width * rec.height
        coarse_pixels = Window.full(rec.width, rec.height, self.zoom.coarse_scale).input_pixels
        self.spent = float(coarse_pixels)
        self.coarse_ratio = coarse_pixels / self.image_pixels
        budget_rng = np.random.default_rng(k) if self.config.order == "sequential" else self.np_random
        self.max_pixels_ratio = self.config.episode_budget(budget_rng)
        self.budget_pixels = self.max_pixels_ratio * self.image_pixels
        self.zoomed_ids: list[int] = []
        self.zoomed: list[Window] = []
        self.fine_ids: list[int] = []
        self.steps = 0
        self._coverage = np.zeros(self.config.grid, dtype=np.float32)
        self._update_mask()
        return self._obs(), {"image_id": rec.image_id, "pixels_ratio": self.pixels_ratio,
                             "max_pixels_ratio": self.max_pixels_ratio}

    @property
    def pixels_ratio(self) -> float:
        return self.spent / self.image_pixels

    def _update_mask(self) -> None:
        taken = np.zeros(len(self.candidates), dtype=bool)
        taken[self.zoomed_ids] = True
        covered = np.array(covered_by(self.candidates, self.zoomed), dtype=bool)
        self._available = available_windows(self._img.candidate_pixels, taken, covered, self.spent, self.budget_pixels)
        self._mask = np.append(self._available, True)

    def action_masks(self) -> np.ndarray:
        """``bool[K + 1]``: allowed actions (windows adding new pixels within budget; stop always)."""
        return self._mask.copy()

    def _obs(self) -> dict[str, np.ndarray]:
        left = budget_left(self.max_pixels_ratio, self.pixels_ratio, self.coarse_ratio)
        budget_abs = self.max_pixels_ratio - self.pixels_ratio
        windows = None
        if self.maps is not None:
            windows = window_features(self.gain, self.maps, self._img.boxes, self._img.candidate_pixels / self.image_pixels,
                                      budget_abs, len(self.zoomed_ids) / self.config.max_steps, self.config.window_extras)
        return observe(self.gain, self.zoomed, self._mask, left, self.config, coverage=self._coverage,
                       context=self._img.context, budget_abs=budget_abs, windows=windows)

    def step(self, action):
        if self._img is None:
            raise RuntimeError("call reset() before step()")
        a = int(action)
        if not 0 <= a <= self.num_candidates:
            raise ValueError(f"action must be in [0, {self.num_candidates}], got {a}")
        self.steps += 1
        info: dict[str, Any] = {"image_id": self._img.record.image_id}
        reward, terminated = 0.0, False
        if a == self.stop_action:
            terminated = True
        elif self._available[a]:
            proposed = self.candidates[a]
            rec = self._img.record
            k, predicted = self._refined(a)
            window = rec.windows[k]
            true_gain = fresh_gain(self._img.items[k], self.zoomed)
            if self.config.reward in ("ap", "dataset-ap"):
                ap_gain = self._ap_gain(k)
                info["ap_gain"] = ap_gain
                reward = ap_gain - self.config.lam * window.input_pixels / self.image_pixels
            else:
                reward = true_gain - self.config.lam * window.input_pixels / self.image_pixels
            self.spent += window.input_pixels
            self.gain.zero_(window)
            for m in self.maps or ():
                m.zero_(window)
            self.zoomed_ids.append(a)
            self.zoomed.append(window)
            np.maximum(self._coverage, zoomed_coverage([window], rec.width, rec.height, *self.config.grid), out=self._coverage)
            self.fine_ids.append(k)
            self._update_mask()
            info.update(proposed=proposed.as_tuple(), window=window.as_tuple(), true_gain=true_gain,
                        predicted_gain=predicted, candidate=a)
            terminated = self.gain.positive_total() < self.config.stop_gain or len(self.zoomed_ids) == self.num_candidates
        else:
            info["invalid_action"] = True
        exhausted = not self._available.any()  # no window fits the budget (or every one is taken or covered)
        if exhausted and self.config.exhausted == "terminate":
            terminated = True
        truncated = not terminated and (self.steps >= self.config.max_steps or exhausted)
        info["pixels_ratio"] = self.pixels_ratio
        if (terminated or truncated) and self.config.info_detections:
            info["detections"] = self.merged().to_coco(self._img.record.image_id)
        return self._obs(), float(reward), terminated, truncated, info

    def _refined(self, a: int) -> tuple[int, float]:
        """Where candidate ``a`` lands if taken now: (index of the cached window in the record, its predicted gain)
        -- the paper's Eq. 6 over the cached positions (the live engine calls ``refine_window``, same rule)."""
        sums = self.gain.window_sums(self._img.positions[a])
        best = best_position(sums)
        return self._img.index[self._img.record.windows[self._img.record.reach[a][best]]], float(sums[best])

    def ap_gains(self) -> np.ndarray:
        """``float64[K]``: the AP points (x 100) each candidate window would add to the current image if taken
        now (refined as :meth:`step` refines it; the measure of ``reward: ap`` or ``dataset-ap``), NaN where the
        window is not allowed. It reads the ground truth: a look-ahead for demonstrators and oracles, never
        part of the observation."""
        if self._img is None:
            raise RuntimeError("call reset() before ap_gains()")
        out = np.full(self.num_candidates, np.nan)
        for a in np.flatnonzero(self._available):
            out[a] = self._ap_gain(self._refined(int(a))[0])
        return out

    def _ap_gain(self, k: int) -> float:
        """AP points (x 100) that the cached window ``k`` adds to the current image's zooms so far (memoised)."""
        return 100 * (self.image_ap(self.fine_ids + [k]) - self.image_ap(self.fine_ids))

    def image_ap(self, fine_ids: Sequence[int]) -> float:
        """COCO AP of the coarse detections merged with the cached windows ``fine_ids`` on the current image,
        memoised per image. With ``reward: ap`` the image's own AP (0..1; 0 on an image without objects, where
        it is undefined); with ``reward: dataset-ap`` the AP of the cache's images, this one swapped in,
        times their number (:class:`~zoomdet.eval.coco_eval.PoolAP`), so a step's change is in the same
        per-image units."""
        key = tuple(sorted(fine_ids))
        if key not in self._img.ap_memo:
            self._img.ap_memo[key] = self._score(self.merged_for(key))
        return self._img.ap_memo[key]

    def _score(self, detections: Detections) -> float:
        from zoomdet.eval.coco_eval import ImageAP, PoolAP

        img = self._img
        if self.config.reward == "dataset-ap":
            if self._pool is None:  # every image of the cache at its coarse pass, evaluated once
                self._pool = PoolAP([r.coco_image for r in self.records], {r.image_id: r.coarse for r in self.records})
            ap = self._pool(img.record.image_id, detections)
            return 0.0 if ap != ap else ap * self._pool.size
        if img.scorer is None:
            rec = img.record
            img.scorer = ImageAP(rec.gt_boxes, rec.gt_labels, rec.gt_crowd, rec.width, rec.height)
        ap = img.scorer(detections)
        return 0.0 if ap != ap else ap

    def single_window_rewards(self, index: int) -> list[dict]:
        """For image ``index``, each candidate window (unrefined) zoomed alone: its paper ``gain``, its
        ``ap_gain`` (AP points) and the merged ``detections``; resets the environment to that image."""
        self.reset(options={"index": index})
        out, base = [], self.image_ap([])
        for a in range(self.num_candidates):
            d = self.merged_for([a])
            out.append({"gain": fresh_gain(self._img.items[a], []), "ap_gain": 100 * (self._score(d) - base),
                        "detections": d})
        return out

    def merged_for(self, fine_ids: Sequence[int]) -> Detections:
        """The coarse detections merged with the cached windows ``fine_ids`` of the current image, as the live
        engine merges them."""
        rec = self._img.record
        return merge_zoom(rec.coarse.without_features(), [rec.fine[k] for k in fine_ids],
                          [rec.windows[k] for k in fine_ids], rec.width, rec.height, self.zoom.merge).detections

    def merged(self) -> Detections:
        """Coarse and fine detections of the episode so far, merged as the live engine merges them."""
        return self.merged_for(self.fine_ids)  # self.zoomed[i] is rec.windows[self.fine_ids[i]]


def window_geometry(env: "ZoomEnv") -> dict:
    """``policy_kwargs`` of the Q-net for an environment: candidate windows normalized to [0, 1], their grid, and
    the head (``features`` on the ``windows`` observation, else ``map``)."""
    rec = env.records[0]
    boxes = [[w.x0 / rec.width, w.y0 / rec.height, w.x1 / rec.width, w.y1 / rec.height] for w in env.candidates_of(rec)]
    groups = [g for g, n in enumerate(env.zoom.windows.grids) for _ in range(n * n)]
    return {"window_boxes": boxes, "window_groups": groups, "head": "features" if env.config.window_features else "map"}
