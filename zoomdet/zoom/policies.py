"""Baseline policies run through the one zoom engine.

* :class:`CoarsePolicy`: the coarse pass only (a plan of one window).
* :class:`FinePolicy`: the whole image at full resolution, the 100% reference
  ("FD" in the paper).
* :class:`SahiPolicy`: uniform sliced inference with SAHI's knobs and names;
  its ``pixels_ratio`` is above 1 because slices overlap.
* :class:`RandomPolicy`: ``k`` random candidate windows after the coarse pass.
* :class:`OraclePolicy`: looks at the fine detections of every candidate and
  the ground truth, and takes windows in order of their remaining true
  accuracy gain (:mod:`zoomdet.zoom.gain`) while it is positive: the upper
  bound a learned policy should approach. Its look-ahead is not counted as
  cost.

:func:`make_policy` builds one from its name; learned policies plug in with
the same :class:`~zoomdet.zoom.engine.ZoomPolicy` interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from zoomdet.types import Detections, Window
from zoomdet.zoom.engine import EpisodeState, ZoomConfig
from zoomdet.zoom.gain import GainItems, fresh_gain, window_gain_items
from zoomdet.zoom.merge import STAGE_COARSE, STAGE_FINE, MergeConfig, MergeResult, merge_zoom, sahi_postprocess
from zoomdet.zoom.windows import GainMap

__all__ = ["GAIN_POLICIES", "SahiConfig", "PolicyConfig", "CoarsePolicy", "FinePolicy", "SahiPolicy", "RandomPolicy", "OraclePolicy",
           "APOraclePolicy",
           "make_policy", "BASELINES", "get_slice_windows"]

BASELINES = ("coarse", "fine", "sahi", "random", "oracle", "oracle-ap")
SAHI_LOW_MODEL_CONFIDENCE = 0.1
"""``sahi.predict.LOW_MODEL_CONFIDENCE``: below it SAHI switches its postprocess to NMS/IOU."""
GAIN_POLICIES = ("greedy", "greedy-entropy", "greedy-entropy+miss")


@dataclass
class SahiConfig:
    """SAHI's sliced-inference options, under SAHI's own names."""

    slice_height: int = 512
    slice_width: int = 512
    overlap_height_ratio: float = 0.2
    overlap_width_ratio: float = 0.2
    confidence_threshold: float = 0.05
    """Slice (and full-image) predictions scoring at or below this are dropped before postprocessing,
    as SAHI's detection models do (``score > confidence_threshold``). SAHI's class default is 0.3; its
    own COCO-style benchmarks use 0.01-0.05, which keeps the low-score boxes AP needs; 0.05 is also
    the detector's own ``score_thresh``."""
    perform_standard_pred: bool = True
    """Also run the whole image, as SAHI's ``perform_standard_pred`` does."""
    standard_pred_scale: Optional[float] = None
    """Scale of that whole-image pass. ``None`` = the engine's ``fine_scale``: SAHI hands the model the
    image at its native size (our models never resize), so the pass costs 100% of the pixels."""
    postprocess_type: str = "GREEDYNMM"
    """``GREEDYNMM``, ``NMM`` or ``NMS``."""
    postprocess_match_metric: str = "IOS"
    """``IOS`` or ``IOU``."""
    postprocess_match_threshold: float = 0.5
    postprocess_class_agnostic: bool = False
    force_postprocess_type: bool = False
    """As in SAHI's ``get_sliced_prediction``: unless forced, a ``confidence_threshold`` below 0.1 switches
    the postprocess to ``NMS`` / ``IOU`` (SAHI does this so merging does not grow boxes from low-score
    predictions)."""

    def effective_postprocess(self) -> tuple[str, str]:
        """``(postprocess_type, match_metric)`` after SAHI's low-confidence switch."""
        if (not self.force_postprocess_type and self.confidence_threshold < SAHI_LOW_MODEL_CONFIDENCE
                and self.postprocess_type.upper() != "NMS"):
            return "NMS", "IOU"
        return self.postprocess_type, self.postprocess_match_metric


@dataclass
class PolicyConfig:
    """Options of the baseline policies."""

    sahi: SahiConfig = field(default_factory=SahiConfig)
    random_k: int = 3
    """Windows the random policy takes (fewer if the budget runs out)."""
    oracle_min_gain: float = 0.0
    """The oracle stops when no window's remaining true gain exceeds this."""
    rnet: Optional[str] = None
    """R-net checkpoint for ``greedy`` (train one with ``zoomdet rnet train``)."""
    greedy_stop: float = 0.1
    """Greedy policies stop when the remaining positive gain on the map is below this (the paper's 0.1)."""
    entropy_max_side: Optional[float] = None
    """``greedy-entropy`` counts only the coarse boxes of at most this side √(w·h), full-image pixels (the objects
    a zoomed pass can see better); ``None`` = every box."""
    miss_map: Optional[str] = None
    """A miss map checkpoint (``benchmarks/miss_map.py``, trained on this detector at this ``coarse_scale``) for
    ``greedy-entropy+miss``: ``greedy-entropy`` with the map of objects the coarse pass missed added to its ranking
    (:mod:`zoomdet.rnet.miss`)."""
    miss_beta: float = 1.0
    """``greedy-entropy+miss``'s weight of the miss map against the entropy, each scaled by its largest window
    density at the episode's start; > 0."""
    agent_override_margin: Optional[float] = None
    """``None``: a trained agent plays alone. A number >= 0: a DQN agent (with ``window_features``) plays
    ``greedy-entropy`` (stopping under ``greedy_stop``) and takes its own pick only where its Q-value beats the
    rule's action by more than this, in reward units (AP points x 100 with ``reward: ap``); its name ends
    ``~override<margin>`` (:func:`zoomdet.agents.policy.override_action`). The engine refines every pick on the
    agent's own map, so an agent with ``state: rnet`` plays the rule's picks refined on the R-net map (an agent
    with ``state: entropy`` refines them as the rule does)."""

    def __post_init__(self) -> None:
        if self.entropy_max_side is not None and not self.entropy_max_side > 0:
            raise ValueError(f"entropy_max_side must be > 0 or null, got {self.entropy_max_side}")
        if self.agent_override_margin is not None and not self.agent_override_margin >= 0:
            raise ValueError(f"agent_override_margin must be >= 0 or null, got {self.agent_override_margin}")
        if not self.miss_beta > 0:
            raise ValueError(f"miss_beta must be > 0, got {self.miss_beta}")


def _single(det: Detections, region: int = -1, stage: int = STAGE_COARSE) -> MergeResult:
    n = len(det)
    return MergeResult(det, torch.full((n,), stage, dtype=torch.int64), torch.full((n,), region, dtype=torch.int64))


class CoarsePolicy:
    """The whole image at ``coarse_scale`` and nothing else."""

    name = "coarse"
    stage = "coarse"

    def plan(self, width: int, height: int, config: ZoomConfig) -> list[Window]:
        return [Window.full(width, height, config.coarse_scale)]

    def combine(self, detections, windows, width, height, config) -> MergeResult:
        return _single(detections[0])


class FinePolicy:
    """The whole image at ``fine_scale``: the reference every ratio is relative to."""

    name = "fine"
    stage = "fine"

    def plan(self, width: int, height: int, config: ZoomConfig) -> list[Window]:
        return [Window.full(width, height, config.fine_scale)]

    def combine(self, detections, windows, width, height, config) -> MergeResult:
        return _single(detections[0], region=0, stage=STAGE_FINE)


def get_slice_windows(width: int, height: int, cfg: SahiConfig, scale: float = 1.0) -> list[Window]:
    """SAHI's slicing (``sahi.slicing.get_slice_bboxes``): ``slice_width`` x ``slice_height`` windows
    overlapping by ``int(overlap_ratio * slice)`` pixels; the last row/column is moved back so it ends
    at the image border. Slices larger than the image are clipped."""
    sw, sh = min(cfg.slice_width, width), min(cfg.slice_height, height)
    step_x = max(1, cfg.slice_width - int(cfg.overlap_width_ratio * cfg.slice_width))
    step_y = max(1, cfg.slice_height - int(cfg.overlap_height_ratio * cfg.slice_height))
    out = []
    y = 0
    while True:
        y0 = min(y, height - sh)
        x = 0
        while True:
            x0 = min(x, width - sw)
            out.append(Window(x0, y0, x0 + sw, y0 + sh, scale))
            if x0 + sw >= width:
                break
            x += step_x
        if y0 + sh >= height:
            break
        y += step_y
    return out


class SahiPolicy:
    """Uniform sliced inference (SAHI), optionally with a whole-image pass."""

    name = "sahi"
    stage = "fine"

    def __init__(self, cfg: Optional[SahiConfig] = None) -> None:
        self.cfg = cfg or SahiConfig()

    def plan(self, width: int, height: int, config: ZoomConfig) -> list[Window]:
        windows = get_slice_windows(width, height, self.cfg, config.fine_scale)
        if self.cfg.perform_standard_pred and len(windows) > 1:  # SAHI skips it when one slice is the image
            scale = config.fine_scale if self.cfg.standard_pred_scale is None else self.cfg.standard_pred_scale
            windows.append(Window.full(width, height, scale))
        return windows

    def combine(self, detections, windows, width, height, config) -> MergeResult:
        parts, regions, stages = [], [], []
        for i, (d, w) in enumerate(zip(detections, windows)):
            d = d.select(d.scores > self.cfg.confidence_threshold)
            parts.append(d.without_features())
            standard = self.cfg.perform_standard_pred and len(windows) > 1 and i == len(windows) - 1
            regions.append(torch.full((len(d),), -1 if standard else i, dtype=torch.int64))
            stages.append(torch.full((len(d),), STAGE_COARSE if standard else STAGE_FINE, dtype=torch.int64))
        det = Detections.cat(parts)
        region, stage = torch.cat(regions), torch.cat(stages)
        kind, metric = self.cfg.effective_postprocess()
        out, idx = sahi_postprocess(det, kind, metric, self.cfg.postprocess_match_threshold,
                                    self.cfg.postprocess_class_agnostic)
        return MergeResult(out, stage[idx], region[idx])  # provenance: the group's best box


class RandomPolicy:
    """``k`` distinct random candidates (uniform over those within budget)."""

    name = "random"
    needs_ground_truth = False

    def __init__(self, k: int = 3) -> None:
        self.k = int(k)

    def gain_map(self, state: EpisodeState) -> Optional[GainMap]:
        return None

    def select(self, state: EpisodeState) -> Optional[int]:
        if len(state.zoomed) >= self.k:
            return None
        idx = np.flatnonzero(state.available)
        return int(state.rng.choice(idx))


class OraclePolicy:
    """Greedy on the true remaining gain of each window (uses ground truth).

    On the first call it runs the fine pass on every candidate (the
    look-ahead, not counted as cost) and computes each window's gain items.
    A window's remaining gain is the sum of its items whose box centre lies
    outside every window zoomed so far; the oracle takes the largest while it
    exceeds ``min_gain``.
    """

    name = "oracle"
    needs_ground_truth = True

    def __init__(self, min_gain: float = 0.0, merge_drop_ios: float = 0.5, coarse_min_px: Optional[float] = None) -> None:
        self.min_gain = float(min_gain)
        self.drop_ios = float(merge_drop_ios)
        self.coarse_min_px = coarse_min_px

    def gain_map(self, state: EpisodeState) -> Optional[GainMap]:
        return None

    def window_items(self, state: EpisodeState) -> list[GainItems]:
        gt = state.ground_truth
        assert gt is not None and state.lookahead is not None
        fine = state.lookahead(state.candidates)
        return [window_gain_items(state.coarse, f, w, gt.boxes, gt.labels, gt.crowd, self.drop_ios, self.coarse_min_px)[1]
                for w, f in zip(state.candidates, fine)]

    def select(self, state: EpisodeState) -> Optional[int]:
        if "oracle_items" not in state.memory:  # once per episode
            state.memory["oracle_items"] = self.window_items(state)
        items = state.memory["oracle_items"]
        zoomed = [state.candidates[i] for i in state.zoomed]
        best, best_gain = None, self.min_gain
        for i in np.flatnonzero(state.available):
            g = fresh_gain(items[i], zoomed)
            if g > best_gain:
                best, best_gain = int(i), g
        return best


class APOraclePolicy:
    """Greedy on the true change of the image's COCO AP (uses ground truth): an upper bound on AP to compare
    deployable policies with, where ``oracle`` maximises the paper's gain, which need not track AP.

    On the first call it runs the fine pass on every candidate (the look-ahead, not counted as cost).
    Each step it merges, for every available window, the coarse detections with the windows zoomed so
    far plus that one (the engine's merge rule), scores the result with COCOeval on this image alone
    (:class:`~zoomdet.eval.coco_eval.ImageAP`), and takes the window with the highest AP while it beats
    the current AP by more than ``min_gain`` (AP points / 100); it stops otherwise, and on images
    without objects.
    """

    name = "oracle-ap"
    needs_ground_truth = True

    def __init__(self, merge: MergeConfig, min_gain: float = 0.0) -> None:
        self.merge = merge
        self.min_gain = float(min_gain)

    def gain_map(self, state: EpisodeState) -> Optional[GainMap]:
        return None

    def _ap(self, state: EpisodeState, scorer, fine: list[Detections], windows: list[int]) -> float:
        return scorer(merge_zoom(state.coarse, [fine[j] for j in windows], [state.candidates[j] for j in windows],
                                 state.width, state.height, self.merge).detections)

    def select(self, state: EpisodeState) -> Optional[int]:
        from zoomdet.eval.coco_eval import ImageAP

        mem = state.memory
        if "ap_oracle" not in mem:  # once per episode
            gt = state.ground_truth
            assert gt is not None and state.lookahead is not None
            scorer = ImageAP(gt.boxes, gt.labels, gt.crowd, state.width, state.height)
            fine = state.lookahead(state.candidates)
            mem["ap_oracle"] = (scorer, fine)
            mem["ap_oracle_current"] = self._ap(state, scorer, fine, [])
        scorer, fine = mem["ap_oracle"]
        current = mem["ap_oracle_current"]
        if current != current:  # no object in the image: nothing to gain
            return None
        best, best_ap = None, current + self.min_gain
        for i in np.flatnonzero(state.available):
            ap = self._ap(state, scorer, fine, list(state.zoomed) + [int(i)])
            if ap > best_ap + 1e-12:
                best, best_ap = int(i), ap
        if best is not None:
            mem["ap_oracle_current"] = best_ap
        return best


def make_policy(name: str, cfg: Optional[PolicyConfig] = None, zoom: Optional[ZoomConfig] = None,
                detector_id: Optional[str] = None):
    """A policy by name: ``coarse``, ``fine``, ``sahi``, ``random``, ``oracle``, ``oracle-ap``, ``greedy`` (needs
    ``cfg.rnet``, trained on features of the detector ``detector_id``), ``greedy-entropy``, ``greedy-entropy+miss``
    (needs ``cfg.miss_map`` of that detector at ``zoom.coarse_scale``), or the
    path of a trained agent (``.zip`` from ``zoomdet train``), or several DQN agents' paths joined by ``+``
    (one policy on their mean Q-values); an agent plays ``greedy-entropy`` where it does not beat it by
    ``cfg.agent_override_margin``, if set."""
    cfg = cfg or PolicyConfig()
    if name.endswith(".zip"):
        from zoomdet.agents.policy import AgentPolicy

        if "+" in name:  # several DQN models: one policy on their mean Q-values
            agent = AgentPolicy.from_paths(name.split("+"), detector_id=detector_id)
        else:
            agent = AgentPolicy.from_path(name, detector_id=detector_id)
        if cfg.agent_override_margin is None:
            return agent
        return agent.overriding(cfg.agent_override_margin, cfg.greedy_stop)
    if name in GAIN_POLICIES:
        from zoomdet.rnet.model import EntropyGain, RNetGain
        from zoomdet.rnet.policies import GreedyPolicy

        if name == "greedy-entropy":
            return GreedyPolicy(EntropyGain(cfg.entropy_max_side), cfg.greedy_stop)
        if name == "greedy-entropy+miss":
            from zoomdet.rnet.miss import EntropyMissPolicy, MissMap

            if not cfg.miss_map:
                raise ValueError("policy 'greedy-entropy+miss' needs a miss map: set policies.miss_map "
                                 "(--set policies.miss_map=PATH); train one with benchmarks/miss_map.py")
            miss = MissMap(cfg.miss_map, detector_id, None if zoom is None else zoom.coarse_scale)
            return EntropyMissPolicy(miss, cfg.miss_beta, cfg.greedy_stop, cfg.entropy_max_side)
        if not cfg.rnet:
            raise ValueError("policy 'greedy' needs an R-net checkpoint: pass --rnet PATH (or set policies.rnet); "
                             "train one with zoomdet rnet train")
        return GreedyPolicy(RNetGain.from_checkpoint(cfg.rnet, expect_detector=detector_id), cfg.greedy_stop)
    if name == "coarse":
        return CoarsePolicy()
    if name == "fine":
        return FinePolicy()
    if name == "sahi":
        return SahiPolicy(cfg.sahi)
    if name == "random":
        return RandomPolicy(cfg.random_k)
    if name == "oracle":
        merge = (zoom or ZoomConfig()).merge
        return OraclePolicy(cfg.oracle_min_gain, merge.drop_ios, merge.coarse_min_px)
    if name == "oracle-ap":
        return APOraclePolicy((zoom or ZoomConfig()).merge)
    raise ValueError(f"unknown policy {name!r}; choose from {', '.join(BASELINES + GAIN_POLICIES)} "
                     f"or the path of a trained agent (.zip)")
