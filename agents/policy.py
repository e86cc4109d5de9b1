"""A trained agent as a :class:`~zoomdet.zoom.engine.ZoomPolicy` of the live zoom engine.

``zoomdet evaluate --policy logs/dqn/ZoomDet-v0_1/best_model.zip`` (and the
service) load the ``.zip`` with :meth:`AgentPolicy.from_path`. The run
folder's ``zoomdet.json`` (written by ``zoomdet train``) names the algorithm
and the environment options, so the live policy builds exactly the
observation the agent was trained on (:func:`zoomdet.envs.zoom_env.observe`)
from the coarse detections, and stops where the environment would have
terminated (remaining gain under ``stop_gain``, the stop action, or
``max_steps``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from zoomdet.envs.zoom_env import (ZoomEnvConfig, budget_left, context_planes, covered_by, feature_maps, gain_model_for,
                                   observe, window_features)
from zoomdet.zoom.engine import EpisodeState
from zoomdet.zoom.windows import GainMap, window_boxes

__all__ = ["AgentPolicy", "RUN_FILE", "load_run_info", "ALGOS", "algorithm_class"]

RUN_FILE = "zoomdet.json"


ALGOS = ("dqn", "ppo_mask")


def algorithm_class(algo: str):
    """The SB3 class of an algorithm name: ``dqn`` (:class:`~zoomdet.agents.qnet.MaskableDQN`) or ``ppo_mask`` (MaskablePPO)."""
    if algo == "dqn":
        from zoomdet.agents.qnet import MaskableDQN

        return MaskableDQN
    if algo == "ppo_mask":
        from sb3_contrib import MaskablePPO

        return MaskablePPO
    raise ValueError(f"unknown algo {algo!r}; choose from {', '.join(ALGOS)}")


def load_run_info(model_path: str | Path) -> dict:
    """``zoomdet.json`` of the run a model file belongs to (its folder, or the one above for checkpoints)."""
    p = Path(model_path)
    for folder in (p.parent, p.parent.parent):
        if (folder / RUN_FILE).is_file():
            return json.loads((folder / RUN_FILE).read_text())
    raise FileNotFoundError(f"no {RUN_FILE} next to {p} or in its parent folder; was it trained with zoomdet train?")


class AgentPolicy:
    """Picks windows with a trained SB3 model (stateless per call: episode data lives in ``EpisodeState``).

    Args:
        model: a loaded ``MaskableDQN`` or ``MaskablePPO``.
        algo: ``dqn`` or ``ppo_mask``.
        env_config: the environment options the model was trained with.
        gain_model: the state builder (R-net or entropy); ``None`` is refused (the oracle state needs ground truth).
        name: name in reports.
    """

    needs_ground_truth = False

    def __init__(self, model, algo: str, env_config: ZoomEnvConfig, gain_model, name: str = "agent") -> None:
        if gain_model is None:
            raise ValueError("an agent trained on the oracle state cannot run live (it needs ground truth); "
                             "train it with state rnet or entropy")
        self.model, self.algo, self.config, self.gain_model, self.name = model, algo, env_config, gain_model, name

    @classmethod
    def from_path(cls, path: str | Path, detector_id: Optional[str] = None, name: Optional[str] = None) -> "AgentPolicy":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"agent model not found: {path}; train one with zoomdet train")
        info = load_run_info(path)
        algo = info["algo"]
        cfg = ZoomEnvConfig(**info["env_config"])
        trained_on = info.get("detector_id")  # agents from before detector ids recorded the weights' digest only
        if detector_id and trained_on != detector_id:
            raise ValueError(f"agent {path} was trained on a cache of detector "
                             f"{trained_on or info.get('detector_checkpoint_id')}, not {detector_id} (other weights or "
                             f"model settings); train it on a cache of this detector")
        model = algorithm_class(algo).load(str(path), device="cpu")
        run = path.parent.name if path.parent.name != "checkpoints" else path.parent.parent.name
        return cls(model, algo, cfg, gain_model_for(cfg, detector_id), name or f"{algo}:{run}/{path.stem}")

    def gain_map(self, state: EpisodeState) -> GainMap:
        return GainMap(state.width, state.height, state.coarse.boxes, self.gain_model.predict(state.coarse))

    def action_mask(self, state: EpisodeState) -> np.ndarray:
        covered = np.array(covered_by(state.candidates, state.zoomed_windows), dtype=bool)
        return np.append(state.available & ~covered, True)

    def select(self, state: EpisodeState) -> Optional[int]:
        gm = state.gain
        assert gm is not None
        if gm.positive_total() < self.config.stop_gain or len(state.zoomed) >= self.config.max_steps:
            return None
        mask = self.action_mask(state)
        if not mask[:-1].any():
            return None
        coarse_ratio = state.memory.setdefault("coarse_ratio", state.pixels_ratio)  # first call: coarse pass only
        left = budget_left(state.max_pixels_ratio, state.pixels_ratio, coarse_ratio)
        context = None
        if self.config.extra_channels:
            if "context" not in state.memory:  # once per image: the planes depend on the coarse detections only
                state.memory["context"] = context_planes(state.coarse, state.width, state.height, self.config)
            context = state.memory["context"]
        budget_abs = state.max_pixels_ratio - state.pixels_ratio
        windows = self.window_features(state, budget_abs) if self.config.window_features else None
        obs = observe(gm, state.zoomed_windows, mask, left, self.config, context=context, budget_abs=budget_abs,
                      windows=windows)
        if self.algo == "ppo_mask":
            action, _ = self.model.predict(obs, deterministic=True, action_masks=mask)
        else:
            action, _ = self.model.predict(obs, deterministic=True)
        a = int(action)
        return None if a >= len(state.candidates) else a

    def window_features(self, state: EpisodeState, budget_abs: float) -> np.ndarray:
        """The ``windows`` observation, as the environment builds it: the image's :func:`feature_maps` and the
        candidates' boxes and costs (built on the first call, kept in ``state.memory``), the maps zeroed where the
        episode has zoomed so far."""
        memory = state.memory
        if "maps" not in memory:
            memory["maps"], memory["maps_zeroed"] = feature_maps(state.coarse, state.width, state.height), 0
            memory["feature_boxes"] = window_boxes(state.candidates)
            memory["feature_cost"] = (np.array([w.input_pixels for w in state.candidates], dtype=np.float64)
                                      / (state.width * state.height))
        for window in state.zoomed_windows[memory["maps_zeroed"]:]:
            for m in memory["maps"]:
                m.zero_(window)
        memory["maps_zeroed"] = len(state.zoomed_windows)
        return window_features(state.gain, memory["maps"], memory["feature_boxes"], memory["feature_cost"], budget_abs,
                               len(state.zoomed) / self.config.max_steps, self.config.window_extras)
